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

A table that is one of several dataclasses, picked by a key of its own (``type =
"password"``), is read by :class:`OneOf`: the keys of all of them, each checked as the picked
one declares it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields
from typing import Any, Final, Protocol, TypeAlias, TypeVar, cast, overload

from .checks import Checks
from .references import looks_like

T = TypeVar("T")
D = TypeVar("D")

# The check of one key: (checks, value as written, dotted path, default) -> what the config
# holds. A refused value is recorded (``checks.fail``) and the default given back in its
# place, so that the checks after it still run and every problem is reported at once. A
# required key has no default: its check is given None.
Check: TypeAlias = Callable[[Checks, Any, str, T], T]

# Field types a whole-string reference is converted to, as annotations spell them (with
# postponed evaluation) or as the types themselves.
_SCALARS: Final[Mapping[object, type[int] | type[float] | type[bool]]] = {
    **{t: t for t in (int, float, bool)},
    **{f"{t.__name__}{none}": t for t in (int, float, bool) for none in ("", " | None")},
}

_CHECK: Final = "check"  # the field metadata entry that holds the check
_MAKE: Final = "make_check"  # or the one that makes it for the dataclass a table is read as


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


def class_setting(
    make: Callable[[type[Any] | None], Callable[[Checks, Any, str, D], T]],
    *,
    factory: Callable[[], D],
) -> T:
    """A config key whose check depends on the dataclass its table is read as (a subclass
    of the one declaring it, with class attributes the check reads): ``make`` gives the
    check for that class, or for None when it is not known (:class:`OneOf` picked none)."""
    # The field holds a T once the check has turned what the table says into one.
    return cast(T, field(default_factory=factory, metadata={_MAKE: make}))


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
            values[f.name] = _run(f, cls, checks, table[f.name], path, default)
            continue
        if defaults is None and _required(f):
            checks.missing(path)
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


class OneOf:
    """A table that is one of several dataclasses (the variants), picked by the value of its
    ``tag`` key, which each variant holds as a class attribute of that name.

    The table accepts the union of the variants' keys, listed as: the tag, the keys every
    variant requires, the variants' own keys (in the order the variants are given), then the
    other keys they all share. In that order, each key given goes through the check the
    picked variant declares for it (or, where it declares none or none was picked, the first
    variant declaring it), and a missing one is reported when the picked variant requires it
    (with none picked: when every variant does). The table is defined when its tag and the
    keys every variant requires are good; only then is each key given that its variant does
    not take a problem too, so that a table refused already is not refused key by key.
    """

    __slots__ = (
        "_fields",
        "_first",
        "_needed",
        "_own_keys",
        "_tag_check",
        "keys",
        "tag",
        "variants",
    )

    def __init__(self, tag: str, tag_check: Check[Any], *variants: type[Any]) -> None:
        self.tag = tag
        self.variants: Mapping[str, type[Any]] = {getattr(c, tag): c for c in variants}
        self._tag_check = tag_check
        self._fields = {c: {f.name: f for f in _declared(c)} for c in variants}
        self._first: dict[str, Field[Any]] = {}
        for declared in self._fields.values():
            for name, f in declared.items():
                self._first.setdefault(name, f)
        shared = [n for n in self._first if all(n in d for d in self._fields.values())]
        self._needed = tuple(
            n for n in shared if all(_required(d[n]) for d in self._fields.values())
        )
        own = [n for n in self._first if n not in shared]
        self.keys = (tag, *self._needed, *own, *(n for n in shared if n not in self._needed))
        # Stray keys are named one variant's keys first.
        self._own_keys = tuple(
            sorted(own, key=lambda n: sum(n in d for d in self._fields.values()))
        )

    def read(self, checks: Checks, raw: Any, key: str) -> tuple[type[Any] | None, dict[str, Any]]:
        """The variant picked and each of its keys, as :func:`read` gives them; no variant
        when the table is not defined."""
        table = checks.table(raw, key, self.keys)
        picked: type[Any] | None = None
        if self.tag in table:
            picked = self.variants.get(
                self._tag_check(checks, table[self.tag], f"{key}.{self.tag}", None)
            )
        else:
            checks.missing(f"{key}.{self.tag}")
        own = {} if picked is None else self._fields[picked]
        values: dict[str, Any] = {}
        for name in self.keys[1:]:
            f = own.get(name, self._first[name])
            if name in table:
                value = _run(
                    f,
                    picked if name in own else None,
                    checks,
                    table[name],
                    f"{key}.{name}",
                    _default(f),
                )
            else:
                if (name in own and _required(f)) or (picked is None and name in self._needed):
                    checks.missing(f"{key}.{name}")
                value = _default(f)
            if name in own:
                values[name] = value
        if picked is None or any(values[n] is None for n in self._needed):
            return None, values
        for name in self._own_keys:
            if name in table and name not in own:
                checks.fail(
                    f"{key}.{name}", f"does not apply to {self.tag} = {getattr(picked, self.tag)!r}"
                )
        return picked, values


def _declared(cls: type[Any]) -> tuple[Field[Any], ...]:
    return tuple(f for f in fields(cls) if _CHECK in f.metadata or _MAKE in f.metadata)


def _run(
    f: Field[Any], cls: type[Any] | None, checks: Checks, value: Any, path: str, default: Any
) -> Any:
    """The field's check of ``value``; a string that is wholly one reference, for a key
    typed as a number or a boolean, is first turned into one (the check then applies its
    range as to a value written in TOML). A literal string stays what it is: TOML has
    numbers and booleans, so a quoted one is refused by the key's check."""
    check = _check(f, cls)
    kind = _SCALARS.get(f.type)
    reference = None if kind is None else checks.reference(value, path)
    if kind is None or reference is None:
        before = len(checks.problems)
        found = check(checks, value, path, default)
        if (
            kind is not None
            and isinstance(value, str)
            and len(checks.problems) > before
            and looks_like(kind, value)
        ):
            # port = "8080": the most common way to get a number wrong in TOML.
            checks.problems[-1] += " (TOML numbers and true/false are written without quotes)"
        return found
    if reference.text is None:  # the variable or file is the problem, reported already
        return default
    try:
        typed = reference.convert(kind)
    except ValueError as exc:
        # A key may take a word besides its numbers (fleet_share = "auto"): its check says.
        before = len(checks.problems)
        found = check(checks, reference.text, path, default)
        if len(checks.problems) == before:
            return found
        del checks.problems[before:]
        checks.fail(path, str(exc))
        return default
    return check(checks, typed, path, default)


def _check(f: Field[Any], cls: type[Any] | None) -> Check[Any]:
    check: Check[Any] = f.metadata[_MAKE](cls) if _MAKE in f.metadata else f.metadata[_CHECK]
    return check


def _required(f: Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None  # required
