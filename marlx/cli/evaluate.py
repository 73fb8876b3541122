"""Greedy evaluation of a saved checkpoint (``rllib evaluate`` / ``marlx evaluate``)."""

from __future__ import annotations

import glob
import json
import os
import pickle

from marlx.errors import NotACheckpointError

CHECKPOINT_MARKER = "rllib_checkpoint.json"


def find_checkpoint(path: str) -> str:
    """A checkpoint folder from a checkpoint, trial or experiment folder (the newest checkpoint wins)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise NotACheckpointError(f"{path} does not exist")
    if os.path.isfile(os.path.join(path, CHECKPOINT_MARKER)):
        return path
    found = [os.path.dirname(p) for p in glob.glob(os.path.join(path, "**", CHECKPOINT_MARKER), recursive=True)]
    # An algorithm checkpoint holds component checkpoints with their own marker; keep the outermost.
    found = [p for p in found if not any(p != q and p.startswith(q + os.sep) for q in found)]
    if not found:
        raise NotACheckpointError(
            f"{path} is not an RLlib checkpoint and holds none (a checkpoint folder contains {CHECKPOINT_MARKER}); "
            "pass a checkpoint_* folder of a run under runs/"
        )
    return max(found, key=os.path.getmtime)


#: Written by ``marlx train/tune`` into each checkpoint folder: the SHA-256 of every file, checked before a restore.
CHECKSUMS_FILE = "marlx_checksums.json"


def _sha256(file: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(path: str) -> None:
    """Record the SHA-256 of every file of checkpoint folder ``path`` (a local folder; others are skipped)."""
    if not os.path.isdir(path):
        return
    sums = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            file = os.path.join(root, name)
            rel = os.path.relpath(file, path)
            if rel != CHECKSUMS_FILE:
                sums[rel] = _sha256(file)
    tmp = os.path.join(path, CHECKSUMS_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(sums, f, indent=0, sort_keys=True)
    os.replace(tmp, os.path.join(path, CHECKSUMS_FILE))


#: The file types of an RLlib 2.60 checkpoint and how each is read back.
_READERS = {".pkl": "pickle", ".json": "json", ".msgpack": "msgpack"}


def _read(file: str, kind: str):
    with open(file, "rb") as f:
        if kind == "json":
            return json.load(f)
        if kind == "msgpack":
            import msgpack

            return msgpack.unpackb(f.read(), raw=False, strict_map_key=False)
        return pickle.load(f)


def check_checkpoint_files(path: str) -> None:
    """Every file of the algorithm checkpoint ``path`` reads back, and the module weights are all there.

    A checkpoint written by ``marlx train``/``marlx tune`` carries :data:`CHECKSUMS_FILE`: then every byte is
    checked too (a flipped byte in the weights still unpickles, and would be evaluated as other weights).

    RLlib restores whatever component folders it finds: a missing ``learner_group/.../rl_module/<module>`` folder
    would leave that module with fresh random weights, evaluated without a word. So every component folder
    (one with ``metadata.json``) must hold its state file, and the learner's ``rl_module`` folder one folder per
    module of the checkpoint's module spec, each with its weights. A truncated or corrupt file is a
    NotACheckpointError naming the file.
    """
    def bad(rel: str, why: str) -> NotACheckpointError:
        return NotACheckpointError(
            f"checkpoint {path} is damaged: {rel} {why}; it cannot be restored: use another checkpoint "
            "(a run folder keeps one checkpoint_* per checkpoint_frequency iterations)")

    sums_file = os.path.join(path, CHECKSUMS_FILE)
    if os.path.isfile(sums_file):  # a checkpoint of marlx train/tune: every byte as written
        try:
            with open(sums_file) as f:
                sums = json.load(f)
        except ValueError:
            raise bad(CHECKSUMS_FILE, "is truncated or corrupt") from None
        for rel, digest in sorted(sums.items()):
            file = os.path.join(path, rel)
            if not os.path.isfile(file):
                raise bad(rel, "is missing")
            if _sha256(file) != digest:
                raise bad(rel, "is corrupt: its bytes differ from those written with the checkpoint (SHA-256 in "
                               f"{CHECKSUMS_FILE})")
    contents = {}
    for root, _dirs, files in os.walk(path):
        for name in sorted(files):
            file = os.path.join(root, name)
            rel = os.path.relpath(file, path)
            kind = _READERS.get(os.path.splitext(name)[1])
            if kind is None or rel == CHECKSUMS_FILE:
                continue
            try:
                contents[rel] = _read(file, kind)
            except (ModuleNotFoundError, ImportError) as e:
                raise NotACheckpointError(f"{path} was written by code that is not importable here: {e}") from None
            except Exception as e:  # noqa: BLE001 - UnpicklingError, EOFError, JSONDecodeError, ValueError, ...
                why = f"{type(e).__name__}: {e}".strip().rstrip(":")
                raise bad(rel, f"is truncated or corrupt ({why[:160]})") from None
    for rel, meta in contents.items():
        if os.path.basename(rel) not in ("metadata.json", CHECKPOINT_MARKER) or not isinstance(meta, dict):
            continue
        folder = os.path.dirname(rel)
        state = meta.get("state_file")
        if state and not any(os.path.join(folder, state + ext) in contents for ext in (".pkl", ".msgpack")):
            raise bad(os.path.join(folder, state + ".pkl"), "is missing")
    for rel, data in contents.items():
        if not rel.endswith(os.path.join("rl_module", "class_and_ctor_args.pkl")) or not isinstance(data, dict):
            continue
        try:
            specs = data["ctor_args_and_kwargs"][1].get("rl_module_specs") or {}
        except (KeyError, IndexError, TypeError, AttributeError):
            continue
        folder = os.path.dirname(rel)
        for module_id in specs:
            weights = [os.path.join(folder, str(module_id), "module_state" + ext) for ext in (".pkl", ".msgpack")]
            if not any(w in contents for w in weights):
                raise bad(weights[0], f"is missing (the weights of module {module_id!r})")


def checkpoint_algorithm(path: str) -> tuple[type, dict]:
    """The Algorithm class and config dict a checkpoint was written with."""
    ctor_file = os.path.join(path, "class_and_ctor_args.pkl")
    if not os.path.isfile(ctor_file):
        raise NotACheckpointError(f"{path} is a checkpoint of a component, not of an algorithm (no class_and_ctor_args.pkl)")
    with open(ctor_file, "rb") as f:
        try:
            data = pickle.load(f)
        except (ModuleNotFoundError, AttributeError) as e:
            raise NotACheckpointError(f"{path} was written by code that is not importable here: {e}") from None
    cls = data["class"]
    args, kwargs = data["ctor_args_and_kwargs"]
    config = args[0] if args else kwargs.get("config")
    return cls, config


def checkpoint_config(path: str, algo: str | None = None):
    """``(Algorithm class, AlgorithmConfig)`` of a checkpoint folder; ``algo`` is the algorithm the user expects."""
    cls, config_dict = checkpoint_algorithm(path)
    if algo is not None:
        from marlx.cli.experiment import resolve_algorithm

        wanted = resolve_algorithm(algo)
        if not issubclass(cls, wanted) and cls.__name__ != wanted.__name__:
            raise NotACheckpointError(
                f"{path} was written by {cls.__name__}, not {wanted.__name__}; pass --algo {cls.__name__} or another checkpoint"
            )
    config = cls.get_default_config()
    if isinstance(config_dict, dict):
        config.update_from_dict(config_dict)
    else:
        config = config_dict.copy(copy_frozen=False)
    return cls, config


ATTACK_CHOICES = ("none", "random", "wolfpack")


def attack_spec(attack: str | None, budget: int | None, cls: type, fitted_planner: bool = False) -> dict | None:
    """The runner's ``attack`` entry for ``--attack NAME [--budget K]`` on a checkpoint of ``cls``.

    Wolfpack needs per-agent Q values and a mixer (QMIX, VDN, FoX, WALL, FIM checkpoints); it times its attacks
    with a Q-difference transformer: a WALL checkpoint's own, or, with ``fitted_planner`` (``marlx attack`` and
    ``evaluate --attack``), one fitted against the frozen policy (:func:`resolve_attacker`). Without a fitted one
    (the video player) a non-WALL checkpoint's Wolfpack starts attacks with the released random schedule (10% per
    ready step). Both attacks need a checkpoint of marlx's team runner.
    """
    from marlx.errors import MarlxError, UnknownNameError

    if attack is None or attack == "none":
        return None
    if attack not in ATTACK_CHOICES:
        raise UnknownNameError("attack", attack, ATTACK_CHOICES)
    if budget is not None and budget < 0:
        raise MarlxError(f"--budget must be >= 0 attacked steps per episode, got {budget}")
    spec: dict = {"name": attack}
    if budget is not None:
        spec["budget"] = int(budget)
    if attack == "wolfpack":
        from marlx.algorithms.qmix import QMIX

        if not issubclass(cls, QMIX):
            raise MarlxError(f"the wolfpack attack needs per-agent Q values and a mixer (QMIX, VDN, FoX, WALL, FIM "
                             f"checkpoints); {cls.__name__} has none: use --attack random on a team checkpoint")
        from marlx.algorithms.wall import WALL

        if not fitted_planner and not issubclass(cls, WALL):
            spec["schedule"] = "random"
    if not getattr(cls, "marlx_team_algorithm", False):
        raise MarlxError(f"{cls.__name__} does not run on marlx's team runner, so it cannot be attacked: attacks "
                         "work on checkpoints of marlx's team algorithms (marlx algos)")
    return spec


def attacker_dir(checkpoint: str, out: str | None = None) -> str:
    """Where ``marlx attack`` keeps the fitted attacker and its results: ``<checkpoint>_attack`` beside it."""
    return os.path.abspath(out) if out else checkpoint.rstrip(os.sep) + "_attack"


def train_budget(config) -> int:
    """WALL's training budget for the victim: a WALL config's own ``num_attack_train``, else the mixer's default
    (QMIX 12, VDN preset 16)."""
    from marlx.attacks.fit import TRAIN_BUDGETS

    if getattr(config, "num_attack_train", None) is not None:
        return int(config.num_attack_train)
    return TRAIN_BUDGETS.get(getattr(config, "mixer", "qmix"), TRAIN_BUDGETS["qmix"])


def resolve_attacker(algorithm, config, cls, folder: str, fit_steps: int | None, refit: bool, seed: int,
                     log, fit_budget: int | None = None) -> tuple[object | None, dict]:
    """The Q-difference transformer Wolfpack uses: ``(model or None for the module's own, info)``.

    A WALL checkpoint carries its own (co-trained with the policy); any other value-based checkpoint gets one
    fitted against the frozen policy on the algorithm's training runner (:func:`marlx.attacks.fit.fit_attacker`),
    saved to ``folder`` and reused by later calls (``refit`` redoes it; a different ``fit_steps`` or ``fit_budget``
    too). ``fit_budget``: attacked steps per fitting episode (default :func:`train_budget`).
    """
    from marlx.algorithms.wall import WALL
    from marlx.attacks.fit import ATTACKER_FILE, FIT_STEPS, FitOptions, fit_attacker, load_attacker, save_attacker

    budget = int(train_budget(config) if fit_budget is None else fit_budget)
    if issubclass(cls, WALL) and not refit and fit_steps is None and fit_budget is None:
        return None, {"source": "checkpoint"}
    path = os.path.join(folder, ATTACKER_FILE)
    runner = algorithm.env_runner_group.local_env_runner
    if os.path.isfile(path) and not refit:
        models, meta = load_attacker(path, runner.module)
        same_budget = fit_budget is None or int(meta.get("fit_budget", -1)) == budget
        if (fit_steps is None or int(meta.get("fit_steps", -1)) == int(fit_steps)) and same_budget:
            log(f"reusing the Wolfpack attacker fitted for {meta.get('fit_steps')} env steps: {path} "
                "(--refit fits a new one)")
            return models.qdiff_transformer, {"source": "reused", "path": path, **meta}
        log(f"the saved attacker was fitted for {meta.get('fit_steps')} env steps with budget "
            f"{meta.get('fit_budget')}, {fit_steps} env steps with budget {budget} asked: fitting again")
    steps = int(FIT_STEPS if fit_steps is None else fit_steps)
    options = FitOptions(steps=steps, budget=budget, seed=int(seed))
    models, summary = fit_attacker(runner, options, log=log)
    meta = {"fit_steps": steps, "fit_budget": options.budget, "seed": int(seed), **summary}
    save_attacker(path, models, meta)
    log(f"saved the fitted attacker: {path}")
    return models.qdiff_transformer, {"source": "fitted", "path": path, **meta}


def evaluate_checkpoint(path: str, episodes: int = 10, algo: str | None = None, explore: bool = False,
                        attack: str | None = None, budget: int | None = None, seed: int | None = None,
                        fit_steps: int | None = None, refit: bool = False, out: str | None = None,
                        log=None, fit_budget: int | None = None) -> dict:
    """Run ``episodes`` greedy episodes of the policy in a checkpoint on its training env, locally.

    Returns ``{"checkpoint", "algorithm", "env", "episodes", "return_mean", "success_rate", "length_mean"}``
    (natural episodes). With ``attack`` ("random" or "wolfpack"; ``budget`` attacked steps per episode, default
    the attack's), the same number of attacked episodes is played too, and the result also holds
    ``"attack"`` (the attack's options), ``"budget"``, ``"natural"`` ``{"return_mean", "success_rate",
    "length_mean"}`` and ``"attacked"`` (those plus ``"attacked_steps_mean"``, ``"attacked_steps_max"``,
    ``"hits_per_agent"``); Wolfpack also ``"attacker"`` (where its Q-difference transformer came from, see
    :func:`resolve_attacker`; fitted ones are kept in ``out``, default ``<checkpoint>_attack``; ``fit_budget`` the
    attacked steps per fitting episode, default WALL's training budget). With an attack the result is also written
    there as JSON.
    """
    import json
    import sys

    from marlx.attacks.evaluation import natural_and_attacked

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    path = find_checkpoint(path)
    cls, config = checkpoint_config(path, algo)
    spec = attack_spec(attack, budget, cls, fitted_planner=True)
    if spec is not None and spec["name"] == "wolfpack":
        # the follow-up selection differentiates through the mixer: keep it on the env runners
        config.rl_module(model_config={**(config._model_config or {}), "mixer_on_runners": True})
    if seed is not None:
        config.debugging(seed=int(seed))
    config.env_runners(num_env_runners=0)
    config.learners(num_learners=0, num_gpus_per_learner=0)
    eval_config = {"explore": explore, "num_envs_per_env_runner": 1}
    if hasattr(config, "attack"):
        eval_config["attack"] = spec
        config.attack = None  # the training runner plays no attack (the attacker fit sets its own)
    config.evaluation(
        evaluation_interval=1,
        evaluation_num_env_runners=0,
        evaluation_duration=int(episodes),
        evaluation_duration_unit="episodes",
        evaluation_config=eval_config,
    )
    folder = attacker_dir(path, out)
    attacker_info = None
    algorithm = config.build_algo()
    try:
        algorithm.restore_from_path(path)
        if hasattr(config, "attack"):
            # the module weights (the mixer too, for wolfpack) go to the runners as RLlib's evaluate does
            for group in (algorithm.eval_env_runner_group, algorithm.env_runner_group):
                group.sync_weights(from_worker_or_learner_group=algorithm.learner_group, inference_only=True)
            if spec is not None and spec["name"] == "wolfpack":
                fit_seed = int(config.seed) if config.seed is not None else 0
                model, attacker_info = resolve_attacker(algorithm, config, cls, folder, fit_steps, refit, fit_seed,
                                                        log, fit_budget=fit_budget)
                if model is not None:
                    algorithm.eval_env_runner_group.local_env_runner.attack.set_qdiff_transformer(model)
            which = ("natural", "attacked") if spec is not None else ("natural",)
            res = natural_and_attacked(algorithm.eval_env_runner_group, int(episodes), which=which)
            nat = res["natural"]
            er = {"num_episodes": nat["episodes"], "episode_return_mean": nat["return_mean"],
                  "success_rate": nat["success_rate"], "episode_len_mean": nat["length_mean"]}
        else:
            res = None
            result = algorithm.evaluate()
            er = result.get("env_runners", result)
    finally:
        algorithm.stop()
    from marlx.callbacks import SUCCESS_METRIC

    out_res = {
        "checkpoint": path,
        "algorithm": cls.__name__,
        "env": config.env if isinstance(config.env, str) else str(config.env),
        "episodes": int(er.get("num_episodes", episodes)),
        "return_mean": float(er.get("episode_return_mean", float("nan"))),
        "success_rate": float(er.get(SUCCESS_METRIC, float("nan"))),
        "length_mean": float(er.get("episode_len_mean", float("nan"))),
    }
    if spec is not None:
        from marlx.attacks.base import get_attack_class

        attack_cls = get_attack_class(spec["name"])
        options = attack_cls({k: v for k, v in spec.items() if k != "name"}, 1, 1, 1).opts
        out_res["attack"] = {"name": spec["name"], **{k: options[k] for k in ("budget", "schedule") if k in options}}
        out_res["budget"] = int(options["budget"])
        out_res["seed"] = None if config.seed is None else int(config.seed)
        keys = ("return_mean", "success_rate", "length_mean", "attacked_steps_mean", "attacked_steps_max",
                "hits_per_agent")
        out_res["natural"] = {k: res["natural"][k] for k in keys[:3]}
        out_res["attacked"] = {k: res["attacked"][k] for k in keys}
        if attacker_info is not None:
            out_res["attacker"] = attacker_info
        os.makedirs(folder, exist_ok=True)
        name = f"{spec['name']}_budget{out_res['budget']}_episodes{out_res['episodes']}_seed{out_res['seed']}.json"
        out_res["results_file"] = os.path.join(folder, name)
        with open(out_res["results_file"], "w") as f:
            json.dump(out_res, f, indent=1)
    return out_res
