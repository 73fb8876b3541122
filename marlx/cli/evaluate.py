"""Greedy evaluation of a saved checkpoint (``rllib evaluate`` / ``marlx evaluate``)."""

from __future__ import annotations

import glob
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


def evaluate_checkpoint(path: str, episodes: int = 10, algo: str | None = None, explore: bool = False) -> dict:
    """Run ``episodes`` greedy episodes of the policy in a checkpoint on its training env, locally.

    Returns ``{"checkpoint", "algorithm", "env", "episodes", "return_mean", "success_rate", "length_mean"}``.
    """
    from marlx.callbacks import SUCCESS_METRIC

    path = find_checkpoint(path)
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
    config.env_runners(num_env_runners=0)
    config.learners(num_learners=0, num_gpus_per_learner=0)
    config.evaluation(
        evaluation_interval=1,
        evaluation_num_env_runners=0,
        evaluation_duration=int(episodes),
        evaluation_duration_unit="episodes",
        evaluation_config={"explore": explore, "num_envs_per_env_runner": 1},
    )
    algorithm = config.build_algo()
    try:
        algorithm.restore_from_path(path)
        result = algorithm.evaluate()
    finally:
        algorithm.stop()
    er = result.get("env_runners", result)
    return {
        "checkpoint": path,
        "algorithm": cls.__name__,
        "env": config.env if isinstance(config.env, str) else str(config.env),
        "episodes": int(er.get("num_episodes", episodes)),
        "return_mean": float(er.get("episode_return_mean", float("nan"))),
        "success_rate": float(er.get(SUCCESS_METRIC, float("nan"))),
        "length_mean": float(er.get("episode_len_mean", float("nan"))),
    }
