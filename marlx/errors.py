"""Errors that marlx reports to users as one clear line (the commands exit with code 2)."""

from __future__ import annotations

import difflib
from typing import Iterable


class MarlxError(Exception):
    """A user-facing error: the message names the problem and the fix."""

    exit_code = 2


class UnknownNameError(MarlxError, ValueError):
    """An algorithm, environment or option name that marlx does not know."""

    #: Valid names listed in the message at most (the registry holds ~80 env names; close matches come first).
    MAX_LISTED = 20

    def __init__(self, kind: str, name: str, valid: Iterable[str], hint: str = ""):
        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
        msg = f"unknown {kind} {name!r}"
        if close:
            msg += f"; did you mean {', '.join(map(repr, close))}?"
        shown = valid if len(valid) <= self.MAX_LISTED else valid[: self.MAX_LISTED] + [f"... ({len(valid) - self.MAX_LISTED} more)"]
        msg += f" Valid {kind}s: {', '.join(shown)}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)
        self.name, self.valid, self.close = name, valid, close


class ConfigKeyError(MarlxError, KeyError):
    """A config key that the algorithm's config does not have."""

    def __init__(self, key: str, where: str, valid: Iterable[str]):
        close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.6)
        msg = f"{where} has no key {key!r}"
        if close:
            msg += f"; close matches: {', '.join(close)}"
        super().__init__(msg)
        self.key, self.close = key, close

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class MissingDependencyError(MarlxError, ImportError):
    """An optional dependency is not installed; the message carries the install command."""

    def __init__(self, what: str, module: str, install: str):
        super().__init__(f"{what} needs the Python package {module!r}, which is not installed; install it with: {install}")
        self.install = install


class NotACheckpointError(MarlxError, FileNotFoundError):
    """A path that is not an RLlib/marlx checkpoint, or a checkpoint of another algorithm."""
