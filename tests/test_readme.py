"""README opens with the two commands a fresh machine runs (the switch on the embedded
default, and the tests), and CI runs the test command exactly as README gives it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.*?)\n```", text, flags=re.S)


def test_readme_opens_with_the_run_and_the_test_command():
    run, test = commands()[:2]
    assert run.endswith("onecard serve") and "pip install" in run
    assert test.endswith("python -m pytest -q") and "'.[test]'" in test


def test_ci_runs_readme_test_command_verbatim():
    test = commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()
