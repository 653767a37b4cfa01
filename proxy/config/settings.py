"""Each config key declared once: a field of its frozen dataclass, with its default and the
check its value takes. The TOML key is the field's name.

    @dataclass(frozen=True, slots=True)
    class Timeout:
        connect: float = setting(positive, default=10.0)
        read: float = setting(positive, default=60.0)

:func:`read` checks a TOML table against such a dataclass: the keys it accepts are the
declared fields (an unknown key's problem lists them in field order), a present key goes
through its check, an absent one takes its default or, with none, is reported as required.
:func:`build` then makes the dataclass. Adding a key is a field here plus its README line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields
from typing import Any, Final, Protocol, TypeAlias, TypeVar, overload

from .checks import Checks

T = TypeVar("T")
D = TypeVar("D")

# The check of one key: (checks, value as written, dotted path, default) -> what the config
# holds. A refused value is recorded (``checks.fail``) and the default given back in its
# place, so that the checks after it still run and every problem is reported at once. A
# required key has no default: its check is given None.
Check: TypeAlias = Callable[[Checks, Any, str, T], T]

_CHECK: Final = "check"  # the field metadata entry that holds the check


class TableCheck(Protocol[T]):
    """The check of a key whose value is a table of ``T``: its default is an instance, or
    None (then the fields' own defaults apply, and the key's default is None)."""

    @overload
    def __call__(self, checks: Checks, value: Any, path: str, default: T) -> T: ...
    @overload
    def __call__(self, checks: Checks, value: Any, path: str, default: None) -> T | None: ...


@overload
def setting(check: Callable[[Checks, Any, str, Any], T]) -> T: ...
@overload
def setting(check: Callable[[Checks, Any, str, Any], T], *, default: None) -> T | None: ...
@overload
def setting(check: Callable[[Checks, Any, str, D], T], *, default: D) -> T: ...
@overload
def setting(check: Callable[[Checks, Any, str, D], T], *, factory: Callable[[], D]) -> T: ...
def setting(check: Check[Any], *, default: Any = MISSING, factory: Any = MISSING) -> Any:
    """A dataclass field that is a config key, with its check; without a default (or a
    factory for one) the key is required. (mypy takes every such field for one with a
    default: it cannot tell that a required one is left out of a constructor call.)"""
    return field(default=default, default_factory=factory, metadata={_CHECK: check})


def keys(cls: type[Any]) -> tuple[str, ...]:
    """The TOML keys a table of ``cls`` accepts, in declaration order."""
    return tuple(f.name for f in _declared(cls))


def read(
    checks: Checks, cls: type[Any], raw: Any, key: str, defaults: Any = None
) -> dict[str, Any]:
    """Each key of ``cls`` from the table ``raw`` at dotted ``key``, by field name. Absent
    keys take the fields' defaults, or every value of ``defaults`` (an instance of ``cls``)
    when given; a required key that is missing or refused reads as None."""
    table = checks.table(raw, key, keys(cls))
    values: dict[str, Any] = {}
    for f in _declared(cls):
        path = f"{key}.{f.name}"
        default = _default(f) if defaults is None else getattr(defaults, f.name)
        if f.name in table:
            values[f.name] = f.metadata[_CHECK](checks, table[f.name], path, default)
            continue
        if defaults is None and _required(f):
            checks.fail(path, "is required")
        values[f.name] = default
    return values


def build(cls: type[T], values: Mapping[str, Any], **given: Any) -> T | None:
    """``cls`` from what :func:`read` found, plus the fields that are no keys (``given``);
    None when a required key was missing or refused."""
    if any(values[f.name] is None for f in _declared(cls) if _required(f)):
        return None
    return cls(**values, **given)


def section(
    cls: type[T], then: Callable[[Checks, str, dict[str, Any]], None] | None = None
) -> TableCheck[T]:
    """The check of a key whose value is a table of ``cls`` (``timeout = { read = 5 }``);
    keys it leaves out take their values from the default (or, when that is None, from the
    fields). ``then`` checks the keys together, once each was checked alone, and may settle
    values that depend on others."""

    def check(checks: Checks, value: Any, path: str, default: Any) -> Any:
        values = read(checks, cls, value, path, default)
        if then is not None:
            then(checks, path, values)
        built = build(cls, values)
        return default if built is None else built

    return check


def parsed(parse: Callable[[str], T]) -> Check[T]:
    """The check of a string (``${VAR}`` resolved) that ``parse`` turns into a value; the
    ValueError it raises is the problem."""

    def check(checks: Checks, value: Any, path: str, default: T) -> T:
        found = checks.text(value, path)
        if found is None:
            return default
        try:
            return parse(found)
        except ValueError as exc:
            checks.fail(path, str(exc))
            return default

    return check


def _declared(cls: type[Any]) -> tuple[Field[Any], ...]:
    return tuple(f for f in fields(cls) if _CHECK in f.metadata)


def _required(f: Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None  # required
