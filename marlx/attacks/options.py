"""Option checking shared by the attacks: unknown keys and bad values raise one ``ValueError`` line."""

from __future__ import annotations

import difflib
from typing import Any


def merge_options(name: str, options: dict | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``options``; an unknown key raises ``ValueError`` naming it and the valid keys."""
    options = dict(options or {})
    for key in options:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=2, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"no option {key!r}{hint} Valid options of {name}: {', '.join(sorted(defaults))}")
    return {**defaults, **options}


def require(cond: bool, name: str, key: str, what: str, value: Any) -> None:
    if not cond:
        raise ValueError(f"option {key!r} must be {what}, got {value!r}")


def check_budget(name: str, value: Any, key: str = "budget") -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, name, key,
            "an integer >= 0 (attacked time steps per episode)", value)


def check_prob(name: str, key: str, value: Any) -> None:
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0, name, key,
            "a probability in [0, 1]", value)
