"""``onecard disburse`` and ``onecard card`` against a real switch process."""

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import TOKENS

pytestmark = pytest.mark.slow


def onecard(sw, *args: str) -> subprocess.CompletedProcess:
    """The command with the token of the role it needs in $ONECARD_TOKEN (the tokens file
    keeps only hashes: the tokens are the ones the switch printed at its first start)."""
    role = "finance" if args[0] == "disburse" else "ops" if args[1] == "show" else "card"
    return subprocess.run([sys.executable, "-m", "onecard.switch.cli", *args,
                           "--data-dir", str(sw.data_dir),
                           "--url", f"http://127.0.0.1:{sw.http}"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ONECARD_TOKEN": TOKENS[str(sw.data_dir)][role]})


def test_disburse_csv_is_idempotent_and_reports_each_line(running_switch, world, tmp_path):
    cards = [world.card(nth=i)[0] for i in range(3)]
    rows = [(cards[0], 120_000), (cards[1], 80_000), ("6299990000000000000", 500),
            (cards[2], 50_000)]
    path = tmp_path / "pension.csv"
    path.write_text("card,amount_fen\n" + "".join(f"{c},{a}\n" for c, a in rows))
    report = tmp_path / "report.csv"
    first = onecard(running_switch, "disburse", "--programme", "PENSION", "--period", "2026-11",
                    "--csv", str(path), "--report", str(report))
    assert first.returncode == 1, first.stderr           # one item could not be paid
    assert "3 credited (2,500.00 yuan)" in first.stdout
    assert "14 unknown or cancelled card: 1" in first.stdout
    assert "4/4 items sent" in first.stderr
    lines = list(csv.DictReader(report.open()))
    assert [(r["line"], r["result"]) for r in lines] == [("2", "00"), ("3", "00"), ("4", "14"),
                                                         ("5", "00")]
    assert all(cards[0] not in r["card"] and "*" in r["card"] for r in lines)

    again = onecard(running_switch, "disburse", "--programme", "PENSION", "--period", "2026-11",
                    "--csv", str(path))
    assert "0 credited" in again.stdout and "94 already paid" in again.stdout
    shown = json.loads(onecard(running_switch, "card", "show", cards[0]).stdout)
    before = world.balance(world.card(nth=0)[1])
    assert shown["balance_fen"] == before + 120_000           # paid once, not twice


def test_disburse_refuses_bad_input_before_sending(running_switch, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("card,amount\n6212,1\n")
    out = onecard(running_switch, "disburse", "--programme", "PENSION", "--period", "2026-11",
                  "--csv", str(path))
    assert out.returncode == 1 and "card,amount_fen" in out.stderr
    out = onecard(running_switch, "disburse", "--programme", "PENSION", "--period", "2026-13",
                  "--csv", str(path))
    assert out.returncode == 1 and "YYYY-MM" in out.stderr
    path.write_text("card,amount_fen\n")
    out = onecard(running_switch, "disburse", "--programme", "NOPE", "--period", "2026-11",
                  "--csv", str(path))
    assert out.returncode == 1 and "no items" in out.stderr


def test_card_commands_use_the_role_tokens(running_switch, world):
    pan, _ = world.card(nth=5)
    lost = onecard(running_switch, "card", "loss", pan)
    assert lost.returncode == 0 and json.loads(lost.stdout)["status"] == "lost"
    assert pan not in lost.stdout                                  # masked
    again = onecard(running_switch, "card", "loss", pan)
    assert again.returncode == 1 and "409" in again.stderr and "lost" in again.stderr
    back = onecard(running_switch, "card", "unfreeze", pan)
    assert json.loads(back.stdout)["status"] == "active"
    bank = onecard(running_switch, "card", "bank", pan, "--bank", "交通银行")
    assert json.loads(bank.stdout)["bank"] == "交通银行"
    wrong = onecard(running_switch, "card", "show", pan, "--token", "x" * 20)
    assert wrong.returncode == 1 and "401" in wrong.stderr
