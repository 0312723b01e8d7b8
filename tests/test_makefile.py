"""
The Makefile's install stamps: ``make run`` and ``make demo`` reinstall the
package only when setup.py or a source file changed since the last install,
so that they start at once, offline too, once installed.  Checked with
C{make -n} (print, don't run) against a stand-in virtualenv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# runs make (make test-fast starts no process at all)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
]


def dry_run(target: str, venv: Path, *variables: str) -> str:
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", target, f"VENV={venv}", *variables],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A stand-in virtualenv: make -n only looks at the files' times."""
    v = tmp_path / "venv"
    (v / "bin").mkdir(parents=True)
    (v / "bin" / "python").touch()
    return v


@pytest.mark.parametrize("target", ["run", "demo"])
def test_an_installed_tree_is_not_installed_again(venv: Path, target: str) -> None:
    (venv / ".installed").touch()
    commands = dry_run(target, venv)
    assert "pip install" not in commands
    assert "python" in commands


@pytest.mark.parametrize("target", ["run", "demo"])
def test_a_first_start_installs(venv: Path, target: str) -> None:
    assert "pip install --quiet ." in dry_run(target, venv)


def test_a_changed_source_installs_again(venv: Path) -> None:
    stamp = venv / ".installed"
    stamp.touch()
    source = ROOT / "apicache" / "config.py"
    # the stamp older than one source file, as after an edit
    older = source.stat().st_mtime - 60
    os.utime(stamp, (older, older))
    assert "pip install --quiet ." in dry_run("run", venv)


def test_the_test_install_also_stamps_the_plain_one(venv: Path) -> None:
    commands = dry_run("install-test", venv)
    assert "pip install --quiet '.[test]'" in commands
    assert f"touch {venv}/.installed-test {venv}/.installed" in commands


def test_test_fast_leaves_out_integration_and_slow_tests(venv: Path) -> None:
    (venv / ".installed-test").touch()
    commands = dry_run("test-fast", venv)
    assert '-m "not integration and not slow"' in commands
    assert "pip install" not in commands


def test_make_test_runs_modules_on_workers(venv: Path) -> None:
    # each module on one worker: its brokers and Redis servers stay its own
    (venv / ".installed-test").touch()
    assert "-n 3 --dist loadfile" in dry_run("test", venv)
    assert "-n 1 --dist loadfile" in dry_run("test", venv, "TEST_WORKERS=1")
