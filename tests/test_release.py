"""What the proxy says it is: the distribution's name, licence and version, on the command
line (as the console script and as ``python -m proxy``) and without an installation."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import proxy
from proxy.release import DISTRIBUTION, UNKNOWN, version

ROOT = Path(proxy.__file__).parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SCRIPT = Path(sys.executable).parent / DISTRIBUTION


def _run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False, cwd=cwd)


def test_the_distribution_is_installed_under_its_own_name_and_licence() -> None:
    """The installed metadata names vendor-auth-proxy, Apache-2.0 and the LICENSE file,
    and the version the package reports is the one pyproject.toml gives."""
    try:
        meta = metadata.metadata(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{DISTRIBUTION} is not installed: run `make` (pip install -e .)")
    assert (meta["Name"], meta["License-Expression"]) == (DISTRIBUTION, "Apache-2.0")
    assert meta.get_all("License-File") == ["LICENSE"]
    assert version() == proxy.__version__ == PROJECT["version"]


def test_pyproject_declares_the_licence_and_the_console_script() -> None:
    """pyproject.toml: an SPDX Apache-2.0 licence with the full text beside it, and one
    console script, under the distribution's name."""
    assert (PROJECT["name"], PROJECT["license"], PROJECT["license-files"]) == (
        DISTRIBUTION,
        "Apache-2.0",
        ["LICENSE"],
    )
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text
    assert "9. Accepting Warranty or Additional Liability." in text
    assert PROJECT["scripts"] == {DISTRIBUTION: "proxy.__main__:main"}


@pytest.mark.parametrize(
    ("command", "prog"),
    [((str(SCRIPT),), DISTRIBUTION), ((sys.executable, "-m", "proxy"), "python -m proxy")],
)
def test_version_and_help_name_the_program_as_it_was_run(
    command: tuple[str, ...], prog: str
) -> None:
    """--version prints the distribution and its version; --help and a command's own help
    show the name the program was run by."""
    shown = _run(*command, "--version")
    assert (shown.returncode, shown.stdout) == (0, f"{DISTRIBUTION} {version()}\n")
    helped = _run(*command, "--help")
    assert helped.returncode == 0
    assert helped.stdout.startswith(f"usage: {prog} [-h] [--version] {{serve,check,")
    served = _run(*command, "serve", "--help")
    assert served.stdout.startswith(f"usage: {prog} serve [-h]")
    wrong = _run(*command, "serv")
    assert wrong.returncode == 2
    assert wrong.stderr.startswith(f"usage: {prog} [-h]")


def test_a_source_tree_that_was_never_installed_has_a_placeholder_version(
    tmp_path: Path,
) -> None:
    """A copy of the package with no metadata anywhere on its path (no site-packages, no
    egg-info beside it) still imports, and says its version is unknown."""
    shutil.copytree(ROOT / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("*.pyc"))
    probe = "import proxy, sys; print(proxy.__version__, 'site' in sys.modules)"
    shown = _run(sys.executable, "-S", "-c", probe, cwd=tmp_path)
    assert (shown.returncode, shown.stdout) == (0, f"{UNKNOWN} False\n"), shown.stderr
