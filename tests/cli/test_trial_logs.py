"""A trial that restarts from a checkpoint keeps every result row it wrote (marlx's KeepTrialLogs callback).

The layer below, shown first: Ray 2.60's JSON and CSV loggers, when a trial's actor starts with a checkpoint (a
PBT exploit, a synchronous-PBT pause, a restart after a failure), copy result.json / progress.csv from the storage
path over the driver's fresher staging copy, so the rows written since the last experiment sync are lost. This
made tests/cli/test_tune_runs.py's PBT run lose row 2 of both trials on a loaded CI machine. Here the sync points
are pinned down: periodic experiment syncs are off (TUNE_GLOBAL_CHECKPOINT_S), and the one checkpoint (iteration 1,
``num_to_keep: 1``) forces the single sync, so the stored result.json holds row 1 when the trial fails after row 3.
"""

import json
import os
import tempfile
import time

import pytest


def _make_trainable():
    # made here, not at module level: Ray's workers cannot import this test module, a closure travels by value
    def trainable(config):
        from ray import tune

        restored = tune.get_checkpoint()
        life = 2 if restored else 1
        start = 1
        if restored:
            with restored.as_directory() as d, open(os.path.join(d, "it.json")) as f:
                start = json.load(f)["it"] + 1
        for it in range(start, 5):
            metrics = {"it": it, "life": life}
            if it == 1:
                with tempfile.TemporaryDirectory() as d:
                    with open(os.path.join(d, "it.json"), "w") as f:
                        json.dump({"it": it}, f)
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
                time.sleep(3.0)  # the forced experiment sync runs now (within ~0.1 s): the stored file holds row 1
            else:
                tune.report(metrics)
            if life == 1 and it == 3:
                raise RuntimeError("injected failure after iteration 3")

    return trainable


def _rows(storage, name, callbacks):
    from ray import tune

    tuner = tune.Tuner(_make_trainable(), run_config=tune.RunConfig(
        name=name, storage_path=str(storage), verbose=0, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=1),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    (result,) = tuner.fit()
    with open(os.path.join(result.path, "result.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["life"], r["it"]) for r in rows]


@pytest.mark.slow
def test_restarted_trial_keeps_the_rows_written_since_the_last_sync(tmp_path, ray_session, monkeypatch):
    from marlx.cli.runner import _keep_trial_logs_callback

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "100000")  # no periodic experiment syncs: only the forced one
    # Ray alone: the restart's copy from storage dropped rows 2 and 3 of the first life
    assert _rows(tmp_path, "ray_only", []) == [(1, 1), (2, 2), (2, 3), (2, 4)]
    # with marlx's callback (run_experiment installs it): every row written, then the rows redone after the restore
    assert _rows(tmp_path, "marlx", [_keep_trial_logs_callback()]) == [
        (1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (2, 4)]
