"""Dependencies point one way: a lower layer never loads a higher one, and the command
line loads the sandbox only for the commands that run it.

Each check runs in a fresh interpreter, so modules other tests imported cannot hide an
import that the one under test would pull in.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import errors


def _loaded_after(statement: str) -> set[str]:
    """The proxy's modules a fresh interpreter holds after running ``statement``."""
    probe = f"{statement}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return {name for name in result.stdout.split() if name.partition(".")[0] == "proxy"}


def test_errors_import_nothing_of_the_proxy() -> None:
    """proxy.errors is the bottom layer: importing it loads no other module of the proxy."""
    assert _loaded_after("import proxy.errors") == {"proxy", "proxy.errors"}


@pytest.mark.parametrize("statement", ["import proxy.config", "import proxy.errors"])
def test_loading_a_config_does_not_load_the_server(statement: str) -> None:
    """Reading routes.toml (or naming an error) loads neither the HTTP server nor the
    forwarding pipeline."""
    loaded = _loaded_after(statement)
    assert "proxy.http.server" not in loaded
    assert "proxy.forward" not in loaded


@pytest.mark.parametrize("argv", [["--help"], ["check", "--config", "/nonexistent.toml"]])
def test_the_command_line_loads_the_sandbox_only_for_its_commands(argv: list[str]) -> None:
    """python -m proxy --help and the proxy's own commands leave the sandbox (and the demo
    that embeds it) unloaded."""
    statement = (
        "import contextlib, io\n"
        "from proxy.__main__ import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), "
        "contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    main({argv!r})"
    )
    loaded = _loaded_after(statement)
    assert "proxy.__main__" in loaded
    assert not {name for name in loaded if name.startswith(("proxy.sandbox", "proxy.demo"))}


def test_the_errors_tree_lists_every_error_with_its_status_and_code() -> None:
    """The tree drawn in errors.py's docstring names every error class, each ProxyError
    with the status and code it is answered with."""
    doc = errors.__doc__ or ""
    classes = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == errors.__name__
    ]
    assert len(classes) > 20
    for cls in classes:
        if issubclass(cls, errors.ProxyError) and cls is not errors.ProxyError:
            pattern = rf"── {cls.__name__}\s+{cls.status} {cls.code}\b"
        else:
            pattern = rf"── {cls.__name__}\s"
        assert re.search(pattern, doc), cls.__name__


# Bottom up, as proxy/__init__.py draws them; a module may import its own layer and lower.
_LAYERS = {
    "errors": 0,
    "clock": 0,
    "release": 0,
    "http": 1,
    "config": 2,
    "state": 3,
    "observe": 4,
    **dict.fromkeys(
        ("routing", "access", "limits", "retry", "adaptive", "headers", "redirects", "bodies"),
        5,
    ),
    "auth": 5,
    "upstream": 6,
    "forward": 6,
    **dict.fromkeys(
        ("runtime", "app", "workers", "fds", "notify", "arguments", "__main__", "check", "demo"),
        7,
    ),
    "sandbox": 7,
}


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """The proxy modules ``path`` imports, as (line, dotted name)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("proxy."):
            found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("proxy.")]
    return found


def test_imports_point_down_the_layers() -> None:
    """No module imports a layer above its own (the sandbox is above everything, and only
    the command line loads it)."""
    root = Path(errors.__file__).parent
    upward = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        package = ".".join(parts if path.name == "__init__.py" else parts[:-1])
        if len(parts) < 2 or parts[1] == "__init__":
            continue
        own = _LAYERS[parts[1]]
        for line, name in _imports(path, package):
            top = name.split(".")[1] if "." in name else ""
            if top and top != parts[1] and _LAYERS[top] > own and top != "sandbox":
                upward.append(f"{path.relative_to(root.parent)}:{line} imports {name}")
            if top == "sandbox" and parts[1] not in ("sandbox", "__main__", "demo"):
                upward.append(f"{path.relative_to(root.parent)}:{line} imports {name}")
    assert upward == []
