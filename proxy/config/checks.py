"""The checks every table is built from: each takes a value as written at its dotted path
and records a problem (naming the dotted key) instead of raising; strings have their
${VAR} and ${file:PATH} references resolved (references.py). The checks that model fields
name (rules.py) are built on them."""

from __future__ import annotations

import math
import os
import re
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from .references import Reference, References

# Shorter values are not scrubbed from problems: "on" or "1" would blank whole messages.
_MIN_SCRUBBED: Final = 4
D = TypeVar("D")  # what a check gives back for a refused value


class Checks:
    """Primitive checks over raw TOML values; problems are collected, not raised."""

    def __init__(self, env: Mapping[str, str], base_dir: Path) -> None:
        self.env = env
        self.base_dir = base_dir
        self.references = References(env, base_dir)
        self.problems: list[str] = []
        # What string keys took from files: secrets as far as logs and problems go.
        self.from_files: list[str] = []
        # Keys an unknown key was taken for a misspelling of.
        self.misspelt: set[str] = set()

    def fail(self, key: str, message: str) -> None:
        # A check may echo the value it refuses; one read from a file is never shown.
        for value in self.from_files:
            for form in _shown_forms(value):
                message = message.replace(form, "***")
        self.problems.append(f"{key}: {message}")

    # -- primitives ---------------------------------------------------------------------

    def table(self, raw: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(key, f"must be a table, got {_type_name(raw)}")
            return {}
        for name in raw:
            if name not in allowed:
                message = f"unknown key (allowed: {', '.join(allowed)})"
                meant = [k for k in _closest(name, allowed) if k not in raw]
                if meant:
                    message += f"; did you mean {meant[0]}?"
                    self.misspelt.add(_join(key, meant[0]))
                self.fail(_join(key, name), message)
        return raw

    def missing(self, path: str) -> None:
        """A required key is not there: a problem, unless a misspelling of it was reported
        already (that one line says it all)."""
        if path not in self.misspelt:
            self.fail(path, "is required")

    def text(
        self, value: Any, path: str, *, secret: bool = False, allow_empty: bool = False
    ) -> str | None:
        """The resolved string; an empty one is a problem (unless allow_empty), never a
        silent fall-back to the default."""
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {_type_name(value)}")
            return None
        resolved = self.interpolate(value, path)
        if resolved is not None and not resolved and not allow_empty:
            shown = "" if secret or not value else f" (after resolving {value!r})"
            self.fail(path, f"must not be empty{shown}")
            return None
        return resolved

    def above_zero(self, value: Any, path: str, default: D) -> float | D:
        """A finite number greater than 0, as a float."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"must be a number, got {_type_name(value)}")
            return default
        number = self.finite(value, path)
        if number is None:
            return default
        if number <= 0:
            self.fail(path, f"must be greater than 0, got {value!r}")
            return default
        return number

    def at_least_zero(self, value: Any, path: str, default: D) -> float | D:
        """A finite number of at least 0, as a float."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"must be a number of at least 0, got {value!r}")
            return default
        number = self.finite(value, path)
        if number is None:
            return default
        if number < 0:
            self.fail(path, f"must be a number of at least 0, got {value!r}")
            return default
        return number

    def finite(self, value: int | float, path: str) -> float | None:
        """value as a float; NaN, infinities and integers too big for a float are problems
        (every comparison with NaN is false, so it would pass any range check)."""
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            shown = repr(value) if len(repr(value)) <= 20 else f"{repr(value)[:17]}..."
            self.fail(path, f"must be a finite number, got {shown}")
            return None
        return number

    def interpolate(self, value: str, key: str) -> str | None:
        """``value`` with its references resolved; None (each problem recorded) when one
        cannot be."""
        resolved, problems, files = self.references.substitute(value)
        for problem in problems:
            self.fail(key, problem)
        self.from_files.extend(files)
        return resolved

    def reference(self, value: Any, key: str) -> Reference | None:
        """The reference a string wholly is, resolved (a problem recorded when it cannot
        be); None for any other value."""
        found = self.references.whole(value) if isinstance(value, str) else None
        if found is not None and found.problem is not None:
            self.fail(key, found.problem)
        return found

    def trusted_cas(self, value: Any, path: str) -> str | None:
        """A PEM file of CA certificates (relative paths as for :meth:`existing`), loaded here as
        serve will load it, so that a file it cannot use fails the check, not the start."""

        def problem(found: Path) -> str | None:
            missing = _file_problem(found)
            if missing is not None:
                return missing
            try:
                trust_store(str(found))
            except ValueError as exc:
                return str(exc)
            return None

        return self.existing(value, path, problem)

    def writable_directory(self, value: Any, path: str) -> str | None:
        """A directory the proxy writes into (relative paths as for :meth:`existing`)."""

        def problem(found: Path) -> str | None:
            if found.is_dir() and os.access(found, os.W_OK | os.X_OK):
                return None
            return "not a writable directory"

        return self.existing(value, path, problem)

    def existing(self, value: Any, path: str, problem: Callable[[Path], str | None]) -> str | None:
        """The absolute path a string names (a relative one is read from the config's
        directory) when ``problem`` finds nothing wrong with it, else None."""
        text = self.text(value, path)
        if text is None:
            return None
        found = Path(text)
        if not found.is_absolute():
            found = self.base_dir / found
        wrong = problem(found)
        if wrong is not None:
            self.fail(path, f"{wrong}: {text!r}")
            return None
        return str(found)


def trust_store(path: str) -> ssl.SSLContext:
    """A client TLS context that verifies servers against the CA certificates of the PEM file
    at ``path`` (and only those); ValueError says why the file cannot be one."""
    try:
        context = ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:  # before OSError: SSLError is one
        raise ValueError("not a PEM file of CA certificates") from exc
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from exc
    if not context.cert_store_stats()["x509"]:
        # A PEM file of CRLs alone loads, yet trusts nothing: every handshake would fail.
        raise ValueError("not a PEM file of CA certificates")
    return context


def _file_problem(path: Path) -> str | None:
    return None if path.is_file() else "file not found"


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _type_name(value: Any) -> str:
    return {
        dict: "a table",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _closest(name: str, allowed: tuple[str, ...]) -> list[str]:
    """The allowed key ``name`` most likely misspells: the fewest edits (a swapped pair of
    letters is one, as in "prot" for "port"), within one edit per four letters; a tie goes
    to the key of the same length ("hots" is "host", not "hosts")."""
    budget = max(1, len(name) // 4)
    scored = [(_edits(name, key), abs(len(key) - len(name)), key) for key in allowed]
    best = min(scored, default=None)
    return [best[2]] if best is not None and best[0] <= budget else []


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps
    of two neighbouring letters, each one edit."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[len(b)]


def _shown_forms(value: str) -> list[str]:
    """The ways a check's message may show ``value``: as it is, escaped as repr() escapes
    it (a tab as \\t), and each run of it between white space or control characters (a
    message may quote only part). Longest first, short runs left alone."""
    forms = {value, repr(value)[1:-1]}
    forms.update(re.split(r"[\s\x00-\x1f\x7f]+", value))
    return sorted((f for f in forms if len(f) >= _MIN_SCRUBBED), key=len, reverse=True)
