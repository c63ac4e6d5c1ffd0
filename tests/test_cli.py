"""The onecard command: configuration errors name the key, data sets are not overwritten by
accident, the load generator drives a real switch, README's commands are what CI runs."""

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from onecard.protocols.enums import TERMINAL_KIND
from onecard.switch import __version__

ROOT = Path(__file__).resolve().parent.parent


def onecard(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onecard.switch.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_version():
    out = onecard("version")
    assert out.returncode == 0 and re.fullmatch(r"onecard \d+\.\d+\.\d+\n", out.stdout)


def test_one_version_string():
    """switch/__init__.py holds it; pyproject.toml reads it, --version and version print it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    for args in (("--version",), ("version",)):
        out = onecard(*args)
        assert (out.returncode, out.stdout) == (0, f"onecard {__version__}\n"), out
    # The installed metadata came from it (reinstall after changing it: pip install -e .).
    assert importlib.metadata.version("onecard") == __version__


@pytest.mark.parametrize(("toml", "named"), [
    ("[server]\nprot = 1\n", "prot"),
    ("[server]\niso8583_port = 70000\n", "iso8583_port"),
    ("[limits]\ndaily_limit_fen = -5\n", "daily_limit_fen"),
    ("[core]\nring_size = 100\n", "ring_size"),
    ("[store]\nsynchronous = 'SOMETIMES'\n", "synchronous"),
    ("datadir = 'x'\n", "datadir"),
])
def test_bad_config_stops_startup_naming_the_key(tmp_path, toml, named):
    cfg = tmp_path / "onecard.toml"
    cfg.write_text(toml)
    out = onecard("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2
    assert named in out.stderr and str(cfg) in out.stderr
    assert not (tmp_path / "d").exists()                # nothing started, nothing generated


def test_onecard_toml_in_the_working_directory_is_the_default(tmp_path):
    (tmp_path / "onecard.toml").write_text("[server]\nhots = 'x'\n")
    out = onecard("serve", cwd=tmp_path)
    assert out.returncode == 2 and "hots" in out.stderr and "onecard.toml" in out.stderr


def test_a_renamed_config_key_still_works_with_one_warning_line(tmp_path):
    cfg = tmp_path / "onecard.toml"
    cfg.write_text("[server]\nmax_native_batch = 500\n")
    out = onecard("demo-data", "--config", str(cfg), "--data-dir", str(tmp_path / "d"),
                  "--cards", "1000")
    assert out.returncode == 0
    warned = [line for line in out.stderr.splitlines() if "max_native_batch" in line]
    assert len(warned) == 1 and "native_batch_max" in warned[0]


def test_missing_config_file_is_reported(tmp_path):
    out = onecard("serve", "--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 2 and "cannot read config file" in out.stderr


def test_demo_data_is_not_overwritten_without_force(tmp_path):
    d = tmp_path / "d"
    assert onecard("demo-data", "--data-dir", str(d), "--cards", "1000").returncode == 0
    again = onecard("demo-data", "--data-dir", str(d), "--cards", "1000")
    assert again.returncode == 1 and "--force" in again.stderr
    assert onecard("demo-data", "--data-dir", str(d), "--cards", "1000",
                   "--force").returncode == 0


def test_terminals_lists_ids_and_key_check_values(demo_dir):
    out = onecard("terminals", "--data-dir", str(demo_dir), "--kind", "gate", "--limit", "3")
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and len(lines) == 4
    assert all(re.match(r"G\d{7}\s+gate\s+native\s+(x919|sm4)\s+[0-9a-f]{6}\s", ln)
               for ln in lines[1:])
    keys = onecard("terminals", "--data-dir", str(demo_dir), "--kind", "gate", "--limit", "3",
                   "--reveal-keys")
    assert all(re.match(r"G\d{7}\s+gate\s+native\s+(x919|sm4)\s+[0-9a-f]{32}", ln)
               for ln in keys.stdout.strip().splitlines()[1:])


def test_terminals_show_each_gates_station_id(demo_dir, terminals):
    """Integrators need a gate's station id for its native Tap (issue 27): every gate listed
    shows the one in the registry; terminals without a station show "-"."""
    registry = {t.tid: t for t in terminals}
    gates = [t for t in terminals if t.kind == TERMINAL_KIND.value_of["gate"]]
    out = onecard("terminals", "--data-dir", str(demo_dir), "--kind", "gate", "--limit",
                  str(len(gates)))
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines[0].split()[:6] == [
        "terminal", "kind", "protocol", "mac", "kcv", "station"]
    assert len(lines) == 1 + len(gates) > 1
    for line in lines[1:]:
        tid, _, _, _, _, station = line.split()[:6]
        assert station == str(registry[tid].station_id), line
    bus = onecard("terminals", "--data-dir", str(demo_dir), "--kind", "bus", "--limit", "2")
    assert [ln.split()[5] for ln in bus.stdout.strip().splitlines()[1:]] == ["-", "-"]


@pytest.mark.slow
@pytest.mark.parametrize(("protocol", "extra"), [
    ("iso8583", ["--window", "8"]),
    ("native", ["--window", "8", "--processes", "2"]),
    ("mixed", ["--rate", "2000"]),
    ("iso8583", ["--rate", "3000", "--tick-us", "0"]),
])
def test_load_generator_against_a_real_switch(running_switch, tmp_path, protocol, extra):
    port = running_switch.native if protocol == "native" else running_switch.iso
    result, png = tmp_path / "result.json", tmp_path / "result.png"
    out = onecard("load", "--protocol", protocol, "--port", str(port), "--native-port",
                  str(running_switch.native), "--connections", "4", "--count", "3000",
                  "--data-dir", str(running_switch.data_dir), "--json", str(result),
                  "--plot", str(png), *extra)
    assert out.returncode == 0, out.stderr
    r = json.loads(result.read_text())
    assert r["completed"] == r["sent"] == 3000 and r["unmatched"] == 0
    assert r["codes"].get("00", 0) > 2500
    assert set(r["latency_ms"]) >= {"p50", "p90", "p99", "p99.9", "p99.99", "max"}
    assert r["mode"] == ("open" if "--rate" in extra else "closed")
    if "--rate" in extra:                    # the generator's own lateness is reported
        assert 0 <= r["late_sends"] <= 3000 and r["send_lag_max_ms"] >= 0
        assert "sent over 0.1 ms after their time" in out.stdout
        if "--tick-us" not in extra:         # 1 ms ticks: most leave late, and it says why
            assert "`--tick-us 0`" in out.stdout
    from onecard.bench.loadresult import LoadResult
    assert LoadResult.load(result).hdr().get_total_count() == 3000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "completed 3,000 of 3,000 sent" in out.stdout and "p99.9" in out.stdout


@pytest.mark.slow
def test_several_generator_processes_share_the_rate(running_switch, tmp_path):
    result = tmp_path / "r.json"
    out = onecard("load", "--port", str(running_switch.iso), "--connections", "4",
                  "--processes", "2", "--rate", "1500", "--duration", "2",
                  "--data-dir", str(running_switch.data_dir), "--json", str(result))
    assert out.returncode == 0, out.stderr
    sent = json.loads(result.read_text())["sent"]
    assert 2400 <= sent <= 3600, sent             # 1,500/s in all, not per process


def test_load_compare_mode(tmp_path):
    from hdrh.histogram import HdrHistogram

    from onecard.bench.loadresult import LoadResult, encode_hdr
    files = []
    for name, tps, lat in (("a", 1000.0, 100), ("b", 2000.0, 50)):
        h = HdrHistogram(1, 60_000_000, 3)
        h.record_value(lat, 100)
        r = LoadResult("iso8583", "closed", 4, 1, 8, 0.0, 1.0, 100, 100, tps,
                       {"p50": lat / 1000, "max": lat / 1000}, {"00": 100}, 0,
                       timeline=[(0.0, 0), (1.0, 100)], histogram=encode_hdr(h))
        r.save(tmp_path / f"{name}.json")
        files.append(str(tmp_path / f"{name}.json"))
    out = onecard("load", "--compare", *files, "--plot", str(tmp_path / "ab.png"))
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("throughput"))
    assert row.split()[-1] == "2.00"
    assert (tmp_path / "ab.png").stat().st_size > 1000


def test_load_generator_reports_an_unreachable_switch(demo_dir):
    out = onecard("load", "--port", "1", "--count", "10", "--data-dir", str(demo_dir))
    assert out.returncode != 0 and "is `onecard serve` running" in out.stderr


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    run, test = blocks[0], blocks[1]
    assert run.endswith("onecard serve") and "pip install -e ." in run
    assert "pytest" in test
    assert readme.index(run) < readme.index("## ")       # before any section
    assert test in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_second_switch_on_the_same_data_or_port_is_refused(running_switch, tmp_path):
    same_dir = onecard("serve", "--data-dir", str(running_switch.data_dir), "--iso8583-port",
                       "0", "--native-port", "0", "--http-port", "0")
    assert same_dir.returncode == 2 and "in use by onecard pid" in same_dir.stderr
    other = tmp_path / "other"
    assert onecard("demo-data", "--data-dir", str(other), "--cards", "1000").returncode == 0
    same_port = onecard("serve", "--data-dir", str(other), "--iso8583-port",
                        str(running_switch.iso), "--native-port", "0", "--http-port", "0")
    assert same_port.returncode == 2
    assert f"cannot listen for iso8583 on 127.0.0.1:{running_switch.iso}" in same_port.stderr
    assert "Traceback" not in same_port.stderr
