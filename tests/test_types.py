"""mypy finds no error in the switch and the bench (and what they import: the core's stubs,
protocols/), with the configuration in pyproject.toml.

The repository root is the package ``onecard`` (pyproject's package-dir maps core/, switch/,
protocols/ and bench/ under it), so there is no directory in which ``onecard`` resolves to
this checkout for mypy to be run from: the test makes one, a temporary directory holding a
symlink named ``onecard`` to the root, and runs mypy there on a fresh cache (an editable
install elsewhere is not what mypy reads: it finds ``onecard`` in its working directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["onecard.switch", "onecard.bench"]


def test_mypy_finds_no_error(tmp_path):
    try:
        import mypy  # noqa: F401
    except ImportError:
        raise AssertionError("mypy is not installed: pip install -e '.[test]'") from None
    (tmp_path / "onecard").symlink_to(ROOT, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    argv = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(tmp_path / "mypy_cache"), "--no-error-summary",
            "--show-error-codes"]
    for package in PACKAGES:
        argv += ["-p", package]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert done.returncode == 0 and not errors, (
        f"mypy exited {done.returncode} with {len(errors)} errors:\n"
        + "\n".join(errors or [done.stdout, done.stderr]))
