"""``${VAR}`` and ``${file:PATH}`` in config strings: what each resolves to, and why not.

A reference names an environment variable or a file (Kubernetes and Docker mount secrets
as files); ``:-default`` stands in when the variable is not set or the file does not exist.
A file's content loses one trailing newline (what ``echo`` and ``kubectl create secret
--from-file`` leave) and is never shown: a problem names the file, not what it holds.
Nothing is cached: each load (a SIGHUP reload too) reads every file again, so a rotated
secret is picked up.

A string that is wholly one reference may stand where a number or a boolean is expected
(``port = "${PORT:-8080}"``): :meth:`Reference.convert` turns its text into that type.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_REF: Final = re.compile(
    r"\$\{(?:file:(?P<path>[^}]*?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*))(?::-(?P<default>[^}]*))?\}"
)
# A secret file larger than this is a mistake (a directory of certificates, a log file),
# and reading it whole would hold it in memory for nothing.
MAX_FILE: Final = 64 * 1024

# Plain decimal only, as the command line takes them (--port 9_000 and --port +80 are
# refused there): a variable that reads "9_000" or " 9000" is more likely a mistake.
_INT: Final = re.compile(r"-?[0-9]+")
_FLOAT: Final = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# What each type is called in a refusal.
_WANTED: Final[Mapping[type, str]] = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
}


@dataclass(frozen=True, slots=True)
class Reference:
    """One reference resolved: its text, or the problem that kept it from having one, and
    where the text came from, for a message that says why it cannot be a number."""

    text: str | None
    problem: str | None = None
    name: str | None = None  # the variable; None for a file
    file: str | None = None  # the file read (or missing), as an absolute path
    defaulted: bool = False  # the default stood in

    def convert(self, kind: type[int] | type[float] | type[bool]) -> int | float | bool:
        """The text as a ``kind`` (a float key takes a whole number as written); ValueError
        says where the text came from and why it is not one, never a file's content."""
        text = self.text or ""
        if kind is bool and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind is not bool and _INT.fullmatch(text):
            return int(text)
        if kind is float and _FLOAT.fullmatch(text):
            return float(text)
        raise ValueError(self._refusal(_WANTED[kind]))

    def _refusal(self, wanted: str) -> str:
        shown = self.text or ""
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        if self.name is None and not self.defaulted:
            return f"file {self.file!r} does not hold {wanted}"  # its content is never shown
        if self.name is None:
            what = f"file {self.file!r} does not exist"
        else:
            what = f"{self.name} is not set" if self.defaulted else f"{self.name} is {shown!r}"
        if self.defaulted:
            return f"{what} and its default {shown!r} is not {wanted}"
        return f"{what}, not {wanted}"


def looks_like(kind: type[int] | type[float] | type[bool], text: str) -> bool:
    """Would ``text`` read as a ``kind`` if it were not quoted?"""
    if kind is bool:
        return text in ("true", "false")
    return bool(_INT.fullmatch(text) or (kind is float and _FLOAT.fullmatch(text)))


class References:
    """Resolves references against an environment and a directory (relative file paths are
    read from the config file's directory)."""

    __slots__ = ("base_dir", "env")

    def __init__(self, env: Mapping[str, str], base_dir: Path) -> None:
        self.env = env
        self.base_dir = base_dir

    def substitute(self, value: str) -> tuple[str | None, list[str], list[str]]:
        """``value`` with every reference replaced: (the text, or None when one could not be
        resolved; the problems; the content of each file read)."""
        problems: list[str] = []
        files: list[str] = []

        def replace(match: re.Match[str]) -> str:
            found = self._one(match)
            if found.problem is not None:
                problems.append(found.problem)
                return ""
            if found.file is not None and not found.defaulted:
                files.append(found.text or "")
            return found.text or ""

        # re.sub never scans what it put in: a file or variable holding "${X}" stays as is.
        text = _REF.sub(replace, value)
        return (None if problems else text), problems, files

    def whole(self, value: str) -> Reference | None:
        """The reference ``value`` wholly is (``"${PORT:-8080}"``), or None when it is
        anything else (a literal, several references, text around one)."""
        match = _REF.fullmatch(value)
        return None if match is None else self._one(match)

    def _one(self, match: re.Match[str]) -> Reference:
        name, path, default = match.group("name"), match.group("path"), match.group("default")
        if name is not None:
            if name in self.env:
                return Reference(self.env[name], name=name)
            if default is not None:
                return Reference(default, name=name, defaulted=True)
            return Reference(
                None,
                f"environment variable {name} is not set "
                f"(write ${{{name}:-default}} to make it optional)",
                name=name,
            )
        if not path:
            return Reference(None, "${file:} names no file (write ${file:/run/secrets/NAME})")
        found = Path(path)
        file = str(found if found.is_absolute() else self.base_dir / found)
        try:
            # A regular file only: open() on a FIFO (or a device) would block until a
            # writer came, and a SIGHUP would then freeze the serving loop with it.
            if not stat.S_ISREG(os.stat(file).st_mode):
                return Reference(None, f"cannot read file {file!r}: not a regular file", file=file)
            with open(file, "rb") as stream:
                data = stream.read(MAX_FILE + 1)
        except FileNotFoundError:
            if default is not None:
                return Reference(default, file=file, defaulted=True)
            return Reference(
                None,
                f"cannot read file {file!r}: it does not exist "
                f"(write ${{file:{path}:-default}} to make it optional)",
                file=file,
            )
        except OSError as exc:
            return Reference(None, f"cannot read file {file!r}: {exc.strerror or exc}", file=file)
        if len(data) > MAX_FILE:
            return Reference(
                None, f"file {file!r} is larger than {MAX_FILE // 1024} KiB", file=file
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return Reference(None, f"file {file!r} is not UTF-8 text", file=file)
        return Reference(_one_newline_less(text), file=file)


def _one_newline_less(text: str) -> str:
    """The text without one trailing line break; a second one was meant (or is a mistake
    the key's own check reports)."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")
