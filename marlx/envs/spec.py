"""What the registry stores about an environment (:class:`EnvSpec`), and :func:`family_specs` for the
adapters that register one name per task of a family (``grf/<scenario>``, ``smax/<map>``, ``lbf/<task>``).

Kept apart from :mod:`marlx.envs.registry` so that adapter modules can build their specs without
importing the registry (which imports them).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment.

    Attributes:
        name: ``family/task``.
        entry_point: ``"module:callable"`` returning a TeamEnv; called with ``defaults`` updated by
            the user's env config.
        defaults: keyword arguments for the entry point.
        requires: importable modules the env needs (checked before the entry point is imported).
        install: the command that installs what is missing.
        description: one line for ``marlx envs``.
    """

    name: str
    entry_point: str
    defaults: dict = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    install: str = ""
    description: str = ""

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.requires)

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


def family_specs(
    family: str,
    entry_point: str,
    descriptions: Mapping[str, str],
    *,
    key: str,
    value: Callable[[str], object] | None = None,
    defaults: Mapping | None = None,
    requires: Iterable[str] = (),
    install: str = "",
) -> list[EnvSpec]:
    """One spec ``family/task`` per entry of ``descriptions`` (task -> one-line description).

    Each spec calls ``entry_point`` with ``defaults`` plus ``{key: value(task)}`` (``value`` defaults to the
    task name itself), e.g. ``family_specs("smax", "marlx.envs.smax:make_smax", {...}, key="map_name")``.
    """
    requires = tuple(requires)
    return [
        EnvSpec(
            f"{family}/{task}",
            entry_point,
            defaults={**(defaults or {}), key: value(task) if value else task},
            requires=requires,
            install=install,
            description=description,
        )
        for task, description in descriptions.items()
    ]
