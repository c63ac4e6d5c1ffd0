"""The deterministic simulator (bench/sim): a short budget of seeds keeps every invariant, a
seed replays byte for byte, and the checker fails when the switch is deliberately broken."""

from __future__ import annotations

import pytest

from onecard.bench import simulate
from onecard.bench.sim import FaultRates, Hooks, InvariantViolation, Simulator, base_data_set
from onecard.bench.sim import faults as fault_kinds

CI_SEEDS = range(5)
CI_STEPS = 150
NO_FAULTS = FaultRates(*([0.0] * len(FaultRates().table())))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return base_data_set(tmp_path_factory.mktemp("sim") / "base", 4000)


def run(base, tmp_path, seed: int, steps: int, **kw):
    return Simulator(seed, base, tmp_path / f"seed-{seed}", steps=steps, **kw).run()


def test_a_short_budget_of_seeds_keeps_every_invariant(base, tmp_path):
    injected, checked = set(), set()
    for seed in CI_SEEDS:                  # seed 3 runs with the maps at their limit
        s = run(base, tmp_path, seed, CI_STEPS, rates=FaultRates().scaled(2))
        injected |= set(s.faults)
        checked |= {name for name, n in s.checks.items() if n}
        assert s.replies > CI_STEPS and s.records > CI_STEPS // 2
    assert set(fault_kinds.KINDS) <= injected, set(fault_kinds.KINDS) - injected
    assert checked >= {"live = replay from opening", "money conserved", "approved reply durable",
                       "recovered journal = durable prefix", "operator change durable",
                       "checkpoint + replay = replay from opening",
                       "retransmission answered as before"}


def test_a_seed_replays_byte_for_byte(base, tmp_path):
    first = run(base, tmp_path, 11, 120)
    again = run(base, tmp_path, 11, 120)
    assert first.digest == again.digest
    assert (first.faults, first.answers, first.records) == (again.faults, again.answers,
                                                            again.records)
    assert run(base, tmp_path, 12, 120).digest != first.digest


def test_replies_released_before_their_commit_are_caught(base, tmp_path):
    slow = NO_FAULTS.__class__(**{**NO_FAULTS.__dict__, "slow_disk": 0.5})
    with pytest.raises(InvariantViolation) as caught:
        run(base, tmp_path, 1, 200, rates=slow, hooks=Hooks(release_early=True))
    assert caught.value.invariant == "approved reply durable"
    assert f"seed 1 step {caught.value.step}" in str(caught.value)


def test_a_corrupted_journal_row_is_caught_at_recovery(base, tmp_path):
    with pytest.raises(InvariantViolation) as caught:
        run(base, tmp_path, 2, 40, rates=NO_FAULTS, hooks=Hooks(mutate_row_after=30))
    assert caught.value.invariant == "recovered journal = durable prefix"
    assert caught.value.step == 30


def test_torn_writes_lose_only_what_was_never_acknowledged(base, tmp_path):
    torn = NO_FAULTS.__class__(**{**NO_FAULTS.__dict__, "torn_write": 0.1,
                                  "wal_copy": 0.05})
    s = run(base, tmp_path, 4, 120, rates=torn)
    assert s.faults[fault_kinds.TORN_WRITE] >= 5
    assert s.checks["recovered journal = durable prefix"] == s.restarts


def test_the_command_line_runs_a_budget_and_sums_it_up(tmp_path, capsys):
    assert simulate.main(["--seeds", "2", "--steps", "15", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 seeds x 15 steps = 30 steps" in out
    assert "invariants checked:" in out and "money conserved" in out
