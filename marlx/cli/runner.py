"""Run resolved experiments through Ray Tune: progress lines, TensorBoard, checkpoints, resume."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import sys
import threading

from marlx._rllib import set_tuner_callbacks, upload_longer_trial_files
from marlx.cli.experiment import Experiment
from marlx.errors import MarlxError


def init_ray(address: str | None = None) -> None:
    """Start Ray in-process sized to this machine (no dashboard), or join a running cluster."""
    import ray

    if ray.is_initialized():
        _register_names()
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if address:
        _join_cluster(address)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    _register_names()


#: What Ray's GCS client logs (Ray 2.60, on stderr) when the head rejects the driver's token.
_AUTH_FAILURE = ("InvalidAuthToken", "Unauthenticated", "authentication token")


def _join_cluster(address: str) -> None:
    """``ray.init(address=...)`` with the token the head expects; a failure is one line naming its cause.

    Ray's GCS client retries a rejected connection for ~20 s, logging a warning line per attempt on the process's
    stderr (file descriptor 2, from C++): those lines are captured while connecting and read for the cause."""
    import tempfile

    import ray

    from marlx._rllib import enable_token_auth_if_available

    token = enable_token_auth_if_available()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
            error = None
        except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, AuthenticationError, ...
            error = e
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        if error is None:
            return
        captured.seek(0)
        log = captured.read().decode(errors="replace")
    if any(key in log or key in str(error) for key in _AUTH_FAILURE):
        have = ("this machine's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) is not the head's"
                if token else "this machine has no token")
        raise MarlxError(
            f"the Ray cluster at {address!r} uses token authentication and rejected this driver: {have}; run "
            "`ray get-auth-token` on the head and set RAY_AUTH_TOKEN=<token> here (or copy the head's "
            "~/.ray/auth_token to this machine)"
        ) from None
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise MarlxError(
        f"cannot reach a Ray cluster at {address!r} ({first}); start one with `ray start --head --port PORT` "
        "and pass --address HOST:PORT (or auto on the head), or drop --address to run on this machine"
    ) from None


def _register_names() -> None:
    """Env and algorithm names must be in Tune's registry (it is shared with the workers through Ray)."""
    import marlx.envs.registry  # noqa: F401
    from marlx.algorithms import register_algorithms

    register_algorithms()


def _get(result: dict, path: str, default=float("nan")):
    node = result
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def format_progress(result: dict, show_success: bool | None = None) -> str:
    """One line per training iteration: iteration, env steps, return, success rate (only for envs that report one),
    steps/s, time, and the env-runner restarts so far when there were any.

    ``show_success``: None decides from ``result`` (shown when it has a success rate, or when no episode has ended
    yet, as ``nan`` like the return); the progress callback remembers per trial whether the env reports one.
    """
    it = result.get("training_iteration", 0)
    steps = _get(result, "num_env_steps_sampled_lifetime", None)
    if steps is None:
        steps = _get(result, "env_runners/num_env_steps_sampled_lifetime", 0)
    ret = _get(result, "env_runners/episode_return_mean")
    succ = _get(result, "env_runners/success_rate", None)
    if show_success is None:
        show_success = succ is not None or _is_nan(ret)
    dt = result.get("time_this_iter_s") or float("nan")
    iter_steps = _get(result, "env_runners/num_env_steps_sampled", 0)
    sps = iter_steps / dt if dt and not math.isnan(dt) and dt > 0 else float("nan")
    line = f"iter {it:4d} | env steps {int(steps or 0):9d} | return {ret:8.3f}"
    if show_success:
        line += f" | success {float('nan') if succ is None else succ:5.2f}"
    line += f" | {sps:7.0f} steps/s | {result.get('time_total_s', 0.0):7.1f} s"
    restarts = _get(result, "fault_tolerance/num_remote_worker_restarts", 0) or 0
    if restarts:
        line += f" | env-runner restarts {int(restarts)}"
    return line


def _is_nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def reports_success(result: dict, known: bool | None) -> bool | None:
    """Whether a trial's env reports success: yes once a result has a success rate, no once episodes ended without
    one, else still unknown."""
    if _get(result, "env_runners/success_rate", None) is not None:
        return True
    if known is None and not _is_nan(_get(result, "env_runners/episode_return_mean")):
        return False
    return known


class Interrupted(MarlxError):
    """A run stopped by SIGINT/SIGTERM after its checkpoint was written; the message says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class GracefulStop:
    """SIGINT and SIGTERM during ``tuner.fit()``: checkpoint, then end the run so that ``--resume`` continues.

    The first signal asks every running trial for a checkpoint after its current iteration (Tune's documented
    in-place ``should_checkpoint`` result flag, set by :meth:`on_trial_result`); once each has written it, Tune's own
    graceful stop (its SIGUSR1 handler) ends the run and saves the experiment state one last time, so the state
    names the newest checkpoint. A second signal stops at once and keeps the last periodic checkpoint; a third
    raises KeyboardInterrupt. Without this, SIGTERM killed the driver with an experiment state up to minutes old
    (Tune saves it every >= 10 s only), and ``--resume`` went back to an older checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.tune_stopped = False
        self.asked: set[str] = set()
        self.written: dict[str, tuple[str, dict]] = {}  # trial id -> (checkpoint path, last result)
        self._previous: dict = {}

    # -- signals --------------------------------------------------------------------------------
    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        # Tune's own SIGINT handler would stop at once without a fresh checkpoint; its SIGUSR1 one stays.
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return True

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            print(f"marlx: {name} received: writing a checkpoint after the current iteration, then stopping "
                  f"({name} again stops at once and keeps the last checkpoint)", file=sys.stderr, flush=True)
        elif not self.tune_stopped:
            print(f"marlx: {name} again: stopping now; the last checkpoint is kept", file=sys.stderr, flush=True)
            self.stop_tune()
        else:
            raise KeyboardInterrupt

    def stop_tune(self) -> None:
        if not self.tune_stopped:
            self.tune_stopped = True
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop: ends the loop, saves the experiment state

    # -- called by the progress callback ---------------------------------------------------------
    def on_result(self, trial, result: dict) -> None:
        if self.signum is not None and trial.trial_id not in self.written:
            result["should_checkpoint"] = True  # Tune: "callbacks may modify the trial result in place"
            self.asked.add(trial.trial_id)

    def on_checkpoint(self, trial, path: str) -> None:
        if self.signum is not None and trial.trial_id in self.asked:
            self.written[trial.trial_id] = (path, dict(trial.last_result or {}))

    def on_step_end(self, trials) -> None:
        if self.signum is None or self.tune_stopped:
            return
        running = [t for t in trials if t.status == "RUNNING"]
        if all(t.trial_id in self.written for t in running):
            self.stop_tune()


class _QuietTuneInterrupt(logging.Filter):
    """Tune's lines on a graceful stop tell the user to call ``Tuner.restore``; marlx prints its own."""

    DROP = ("Stop signal received", "has been interrupted", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(d in msg for d in self.DROP)


def _progress_callback(stop: GracefulStop | None = None, verbose: bool = True):
    from ray import tune

    class ProgressLines(tune.Callback):
        """Prints one line per iteration and where checkpoints go; carries out a graceful stop."""

        def __init__(self):
            self.success: dict[str, bool | None] = {}  # trial id -> does its env report success?
            self.restarts: dict[str, int] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if stop is not None:
                stop.on_result(trial, result)
            if verbose:
                prefix = f"[{trial.trial_id}] " if len(trials) > 1 else ""
                known = self.success[trial.trial_id] = reports_success(result, self.success.get(trial.trial_id))
                print(prefix + format_progress(result, show_success=True if known is None else known), flush=True)
                restarts = int(_get(result, "fault_tolerance/num_remote_worker_restarts", 0) or 0)
                if restarts > self.restarts.get(trial.trial_id, 0):
                    print(f"{prefix}an env runner failed and was restarted ({restarts} restart"
                          f"{'s' if restarts != 1 else ''} so far); its samples of that iteration are lost",
                          flush=True)
                self.restarts[trial.trial_id] = restarts

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            from marlx.cli.evaluate import write_checksums

            write_checksums(checkpoint.path)  # checked before any restore by marlx evaluate
            if stop is not None:
                stop.on_checkpoint(trial, checkpoint.path)
            if verbose:
                print(f"{'[' + trial.trial_id + '] ' if len(trials) > 1 else ''}checkpoint: {checkpoint.path}",
                      flush=True)

        def on_step_end(self, iteration, trials, **info):
            if stop is not None:
                stop.on_step_end(trials)

        def on_trial_complete(self, iteration, trials, trial, **info):
            if verbose and len(trials) > 1:  # a search: one line per finished (or scheduler-stopped) trial
                it = (trial.last_result or {}).get("training_iteration", 0)
                print(f"[{trial.trial_id}] trial ended at iteration {it}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"trial {trial.trial_id} failed; its error is in {trial.local_path}/error.txt", flush=True)

    return ProgressLines()


def _keep_trial_logs_callback():
    from ray import tune

    class KeepTrialLogs(tune.Callback):
        """Keeps a trial's result.json / progress.csv rows when the trial restarts from a checkpoint.

        Ray 2.60: when a trial's actor starts with a checkpoint set (a PBT exploit, a trial paused by synchronous
        PBT and resumed, a restart after a failure), the JSON and CSV loggers first copy that file from the storage
        path over the driver's staging copy (``LoggerCallback._restore_from_remote``). The storage copy is only as
        new as the last experiment sync (every >= 10 s by default), so every row written since that sync was lost:
        a synchronous-PBT run whose sync fell between iterations 1 and 2 kept rows 1, 3, 4 of both trials. Tune
        calls user callbacks before its default loggers, so this one first uploads the staging copy where it is the
        longer, and the loggers' copy brings back every row. Shown in tests/cli/test_trial_logs.py.
        """

        FILES = ("result.json", "progress.csv")

        def on_trial_start(self, iteration, trials, trial, **info):
            if trial.checkpoint:
                upload_longer_trial_files(trial, self.FILES)

    return KeepTrialLogs()


_ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception): ")


def root_cause(error: BaseException) -> str:
    """The first exception line of a trial's error chain: RLlib re-raises some errors as a different,
    misleading one (e.g. module set-up failures as an RLModuleConfig deprecation), and the first is the cause."""
    lines = [line.strip() for line in str(error).splitlines()]
    found = [line for line in lines if _ERROR_LINE.match(line)]
    return found[0] if found else (lines[-1] if lines else type(error).__name__)


def experiment_dir(exp: Experiment) -> str:
    return os.path.join(exp.storage_path, exp.name)


def check_resumable(exp: Experiment) -> None:
    from ray import tune

    path = experiment_dir(exp)
    if not tune.Tuner.can_restore(path):
        raise MarlxError(f"nothing to resume in {path}: no interrupted run of {exp.name!r} there; run without --resume")


def _interrupted(exp: Experiment, stop: GracefulStop, results) -> Interrupted:
    """The one-line report of a run stopped by a signal: where it stopped and how to continue."""
    name = signal.Signals(stop.signum).name
    parts = []
    for trial_id, (ckpt, result) in sorted(stop.written.items()):
        steps = result.get("num_env_steps_sampled_lifetime", _get(result, "env_runners/num_env_steps_sampled_lifetime", 0))
        prefix = f"[{trial_id}] " if len(stop.written) > 1 else ""
        parts.append(f"{prefix}checkpoint at iteration {result.get('training_iteration', '?')} "
                     f"({int(steps or 0)} env steps): {ckpt}")
    if not parts:
        kept = [r.checkpoint.path for r in results if getattr(r, "checkpoint", None)]
        parts.append(f"kept the last checkpoint: {kept[0]}" if kept else "no checkpoint was written yet")
    return Interrupted(f"stopped by {name}; {'; '.join(parts)}. To continue, run the same command with "
                       f"--resume (experiment {exp.name!r} in {experiment_dir(exp)})", stop.signum)


def tune_config(exp: Experiment):
    """Tune's TuneConfig for ``exp``: metric, mode, scheduler, searcher and concurrency of its ``tune:`` block."""
    from ray import tune

    settings = exp.tune
    if settings is None:
        return tune.TuneConfig(num_samples=exp.num_samples)
    return tune.TuneConfig(
        metric=settings.metric,
        mode=settings.mode,
        num_samples=settings.num_samples,
        max_concurrent_trials=settings.max_concurrent_trials,
        scheduler=settings.build_scheduler(),
        search_alg=settings.build_searcher(),
        time_budget_s=settings.time_budget_s,
    )


def run_experiment(exp: Experiment, resume: bool = False, verbose: bool = True, force: bool = False):
    """Train ``exp`` with Ray Tune; returns Tune's ResultGrid. ``resume`` continues an interrupted run.

    A single run whose trial fails raises a MarlxError with the root cause. A search (``exp.is_search``) does not:
    :func:`marlx.cli.tune.summarize` prints its table with the errored trials' root causes.
    """
    from ray import tune

    from marlx.cli import tune as marlx_tune

    for notice in exp.notices:
        print(f"note: {notice}", file=sys.stderr)
    path = experiment_dir(exp)
    stop = GracefulStop()
    callbacks = [_progress_callback(stop, verbose), _keep_trial_logs_callback()]
    if resume:
        check_resumable(exp)
        if exp.is_search:
            marlx_tune.check_spec(exp, path, force=force)
        print(f"resuming {exp.name} from {path}", flush=True)
        tuner = tune.Tuner.restore(
            path, trainable=exp.algo_class, resume_unfinished=True, resume_errored=True,
            param_space=exp.param_space(),
        )
        set_tuner_callbacks(tuner, callbacks)  # Tuner.restore keeps the stored RunConfig without callbacks
    else:
        ckpt = exp.checkpoint_config
        run_config = tune.RunConfig(
            name=exp.name,
            storage_path=exp.storage_path,
            stop=exp.stop or None,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=int(ckpt.get("checkpoint_frequency", 10)),
                checkpoint_at_end=bool(ckpt.get("checkpoint_at_end", True)),
                num_to_keep=ckpt.get("num_to_keep"),
            ),
            callbacks=callbacks,
            verbose=0,
        )
        tuner = tune.Tuner(
            exp.algo_class,
            param_space=exp.param_space(),
            tune_config=tune_config(exp),
            run_config=run_config,
        )
        if exp.is_search:
            marlx_tune.write_spec(exp, path)
    # Tune's console header (a box and "tensorboard --logdir <Ray session folder>", the wrong folder): marlx's own
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if verbose:
        print(f"run folder: {path} (tensorboard --logdir {path})", flush=True)
    installed = stop.install()
    quiet = _QuietTuneInterrupt()
    tune_logger = logging.getLogger("ray.tune.tune")
    tune_logger.addFilter(quiet)
    try:
        results = tuner.fit()
    finally:
        tune_logger.removeFilter(quiet)
        if installed:
            stop.uninstall()
    if stop.signum is not None:
        raise _interrupted(exp, stop, results)
    if exp.is_search:
        return results
    for res in results:
        if res.error:
            raise MarlxError(f"training of {exp.name!r} failed: {root_cause(res.error)} (details in {res.path}/error.txt)")
    if verbose:
        for res in results:
            ckpt = res.checkpoint.path if res.checkpoint else "none"
            print(f"done: {exp.name} -> {res.path}\n  last checkpoint: {ckpt}\n  tensorboard --logdir {path}", flush=True)
    return results
