"""``onecard cluster up --regions 3``: three regional switches and a NATS cluster on loopback,
driven by ``onecard load`` as an operator would (issue 15), then ``status`` and ``down``; the
commands it prints give approved forwarded purchases and taps, and the operator tokens it
makes are in one 0600 file (its stdout is not a terminal) and nowhere else, never in a log
(issues 27, 28)."""

import json
import re
import shlex
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from onecard.switch.cluster import tokens as cluster_tokens
from onecard.switch.cluster.regions import forwarding_pair, plan

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "onecard.switch.cli"]
# Load shedding off and a generous forwarding timeout, as for every test that counts answers
# (conftest.start_switch): the codes must not depend on how busy the machine running the
# tests is (a CI run saw 4 of 4,216 forwarded batches past 150 ms: 91).
STEADY = ("--latency-budget-ms", 0, "--forward-timeout-ms", 2000)
TOKEN_LINE = re.compile(r"^  ([a-z]+) +([a-z]+-operator) +(\S{40,})$", re.MULTILINE)
FILE_BYTES_MAX = 64 << 20           # every file a 3,000-card cluster writes is far smaller


def onecard(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout_s)


def forwarded(http_port: int, province: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    key = f'onecard_forwarded_requests_total{{origin="issuer",province="{province}"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(key))


def load(info: dict, region: str, card_region: str, card_province: int, out) -> dict:
    r = info["regions"][region]
    done = onecard("load", "--port", r["iso8583_port"], "--data-dir", f"{r['home']}/data",
                   "--terminal-province", r["provinces"][0], "--card-province", card_province,
                   "--cards-data-dir", f"{info['regions'][card_region]['home']}/data",
                   "--connections", 2, "--window", 4, "--duration", 2, "--balance-share", 0,
                   "--json", out)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def printed(stdout: str, label: str) -> list[str]:
    """The ``onecard load`` command ``up`` printed after ``label``, as onecard's arguments."""
    (line,) = [ln for ln in stdout.splitlines() if ln.strip().startswith(f"{label} ")]
    argv = shlex.split(line.strip()[len(label):])
    assert argv[:2] == ["onecard", "load"], line
    return argv[1:]


def run_printed(argv: list[str], out: Path) -> dict:
    """A printed load command as a user runs it, for 2 s instead of 10."""
    at = argv.index("--duration")
    done = onecard(*argv[:at + 1], 2, *argv[at + 2:], "--json", out)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


def test_plan_follows_the_layouts():
    assert plan(3) == {"sh": [31, 11, 12, 13, 34, 44, 81, 82], "js": [32], "zj": [33]}
    assert plan(2) == {"sh": [31, 11, 12, 13, 33, 34, 44, 81, 82], "js": [32]}
    assert list(plan(4)) == ["sh", "js", "zj", "ah"]
    assert forwarding_pair(plan(3)) == ("sh", 31, "js", 32)
    assert plan(3, "groups") == {"jjj": [11, 12, 13], "yrd": [31, 32, 33, 34],
                                 "gba": [44, 81, 82]}
    assert plan(2, "groups") == {"jjj": [11, 12, 13], "yrd": [31, 32, 33, 34, 44, 81, 82]}
    assert forwarding_pair(plan(3, "groups")) is None
    for count, layout in ((4, "groups"), (5, "split"), (1, "split")):
        with pytest.raises(Exception, match="between 2 and"):
            plan(count, layout)


def files_holding(directory: Path, secrets: list[str]) -> list[str]:
    """Every file under directory holding one of secrets (a bounded walk: the cluster's own
    files, each read whole)."""
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            assert path.stat().st_size < FILE_BYTES_MAX, path
            data = path.read_bytes()
            found += [f"{path}: {s[:6]}..." for s in secrets if s.encode() in data]
    return found


def test_three_regions_print_approved_forwarded_commands_and_tokens_once(tmp_path):
    """The default layout splits the Yangtze River Delta: the printed forwarded purchases and
    taps (Jiangsu cards at Shanghai terminals) are decided by js and approved; the tokens
    printed work and are in no file, logs included."""
    home = tmp_path / "regions"
    made: list[tuple[str, str, str]] = []
    up = onecard("cluster", "up", "--regions", 3, "--cards", 3000, "--dir", home, *STEADY)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert up.stdout.strip().endswith("ready")
        info = json.loads((home / "regions.json").read_text())
        assert sorted(info["regions"]) == ["js", "sh", "zj"]
        sh = info["regions"]["sh"]
        purchases = run_printed(printed(up.stdout, "purchases"), tmp_path / "purchases.json")
        taps = run_printed(printed(up.stdout, "taps"), tmp_path / "taps.json")
        for result in (purchases, taps):
            # Approved by the issuer (a few 51s: the demo cards' balances run out).
            assert result["codes"].get("00", 0) > 0.5 * result["completed"] > 0, result["codes"]
            assert "62" not in result["codes"] and "91" not in result["codes"]
        # Every one of them went to js, Jiangsu's issuer.
        assert forwarded(sh["http_port"], 32) == purchases["completed"] + taps["completed"]
        # Not a terminal: the tokens are in a 0600 file, only its path on stdout.
        token_file = home / cluster_tokens.FILE_NAME
        assert f"in {token_file} (0600" in up.stdout
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        made = TOKEN_LINE.findall(token_file.read_text())
        assert not any(t in up.stdout + up.stderr for _, _, t in made)
        assert len(made) == 3 * 4 and {r for r, _, _ in made} == {"sh", "js", "zj"}
        token = next(t for r, name, t in made if (r, name) == ("sh", "ops-operator"))
        request = urllib.request.Request(
            f"http://127.0.0.1:{sh['http_port']}/admin/audit?limit=1",
            headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200
    finally:
        down = onecard("cluster", "down", "--dir", home)
    assert down.returncode == 0 and "stopped 6 process group(s)" in down.stdout, down.stdout
    for region in ("sh", "js", "zj"):
        log = (home / region / "switch.log").read_text()
        # The line a first start shows on a terminal ("operator NAME roles R token T"): never here.
        assert "onecard: ready" in log and not re.search(r"token [\w-]{40,}", log)
    assert {line.split(":")[0] for line in files_holding(home, [t for _, _, t in made])} == {
        str(token_file)}


def test_three_group_regions_up_loaded_and_down(tmp_path):
    home = tmp_path / "regions"
    up = onecard("cluster", "up", "--regions", 3, "--layout", "groups", "--cards", 3000,
                 "--dir", home, *STEADY)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert up.stdout.strip().endswith("ready")
        info = json.loads((home / "regions.json").read_text())
        assert sorted(info["regions"]) == ["gba", "jjj", "yrd"]
        assert "forwarded and refused (62" in up.stdout
        status = onecard("cluster", "status", "--dir", home)
        assert status.returncode == 0 and status.stdout.count(" ready ") == 3, status.stdout
        table = onecard("region", "table", "--nats", info["nats_urls"][1])
        assert "version 1: gba: 44,81,82; jjj: 11,12,13; yrd: 31,32,33,34" in table.stdout
        # Jiangsu cards at Shanghai POS: yrd's own, decided there.
        local = load(info, "yrd", "yrd", 32, tmp_path / "local.json")
        assert local["codes"].get("00", 0) > 0.5 * local["completed"]
        # Beijing cards at Shanghai POS: every one forwarded to jjj and decided there; the
        # joint catalogue does not take Beijing cards for purchases in Shanghai: 62, as the
        # single switch answers.
        foreign = load(info, "yrd", "jjj", 11, tmp_path / "foreign.json")
        assert foreign["completed"] > 0 and foreign["codes"] == {"62": foreign["completed"]}
        assert forwarded(info["regions"]["yrd"]["http_port"], 11) == foreign["completed"]
    finally:
        down = onecard("cluster", "down", "--dir", home)
    assert down.returncode == 0 and "stopped 6 process group(s)" in down.stdout, down.stdout
    assert onecard("cluster", "status", "--dir", home).returncode == 1
