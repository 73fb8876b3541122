"""marlx's RLlib algorithms, found by name (``run: QMIX`` in YAML, ``tune.Tuner("QMIX")``).

Each entry maps a name to ``"module:Class"`` of an RLlib ``Algorithm`` subclass. Classes are imported
only when a name is used, so that importing marlx stays fast. :func:`register_algorithms` registers all
names with Ray Tune (``marlx.cli`` calls it; so does ``import marlx.algorithms.<algo>``).

An algorithm class whose attribute ``marlx_team_algorithm`` is true trains on the team view of a
marlx env (Dict observation, joint action); any other algorithm on a marlx env gets the env's RLlib
``MultiAgentEnv`` view with one shared policy.
"""

from __future__ import annotations

import importlib
import importlib.util

import marlx.envs.registry  # noqa: F401  (env names such as "builtin/push_box" work in every algorithm config)
from marlx.errors import UnknownNameError

ALGORITHMS: dict[str, str] = {
    "QMIX": "marlx.algorithms.qmix:QMIX",
    "VDN": "marlx.algorithms.qmix:VDN",
    "FoX": "marlx.algorithms.fox:FoX",
    "WALL": "marlx.algorithms.wall:WALL",
    "FIM": "marlx.algorithms.fim:FIM",
    "MAPPO": "marlx.algorithms.mappo:MAPPO",
    "IPPO": "marlx.algorithms.mappo:IPPO",
}


def algorithm_names() -> list[str]:
    """marlx's algorithm names whose module exists in this installation."""
    return sorted(n for n, path in ALGORITHMS.items() if importlib.util.find_spec(path.split(":")[0]))


def get_algorithm_class(name: str):
    if name not in ALGORITHMS or name not in algorithm_names():
        raise UnknownNameError("marlx algorithm", name, algorithm_names())
    module, attr = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def register_algorithms() -> None:
    """Register every marlx algorithm with Ray Tune under its name (lazily imported)."""
    from ray.tune.registry import register_trainable

    for name in algorithm_names():
        register_trainable(name, get_algorithm_class(name))
