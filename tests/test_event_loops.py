"""The switch in this process on both event loops it may run on (switch/intake.py, issue 29):
asyncio's own and uvloop's (what ``onecard serve`` uses), as uvloop's own suite runs each test
on both. A purchase is approved over real TCP, its reply waits for the durable journal, a
retransmission gets the same answer, and after the stop the journal and the state hold it
once."""

from __future__ import annotations

import asyncio
import shutil

import pytest
import uvloop

from onecard.core.state import TERM_POS
from onecard.switch.config import Config, with_overrides
from onecard.switch.server import Switch
from onecard.switch.store import loader

from conftest import World
from termsim import IsoTerminal, socket_exchange

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def _config(data_dir) -> Config:
    return with_overrides(Config(), data_dir=str(data_dir), **{
        "server.iso8583_port": 0, "server.native_port": 0, "server.http_port": 0,
        "server.latency_budget_ms": 0})


def _terminal_session(port: int, world: World, pan: str) -> list[dict]:
    """A POS, in a thread of its own (blocking sockets): sign on, buy, send the same purchase
    again (a retransmission), and the answers."""
    sock, exchange = socket_exchange("127.0.0.1", port, 2)
    try:
        t = IsoTerminal(world.terminal(TERM_POS, 31, 0), exchange)
        assert t.signon()["39"] == "00"
        request = t.purchase(pan, 1234)
        return [t.send(request)[0], t.send(request)[0]]
    finally:
        sock.close()


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_purchase_is_durable_and_answered_once_on_either_loop(demo_dir, terminals, tmp_path,
                                                                loop_name):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    world = World(data, terminals)
    pan, idx = world.card(31, min_balance=10_000)
    before = world.balance(idx)

    async def serve() -> list[dict]:
        switch = Switch(_config(data), loader.load(data))
        await switch.start()
        try:
            port = switch.listeners[0].port
            return await asyncio.get_running_loop().run_in_executor(
                None, _terminal_session, port, world, pan)
        finally:
            await switch.stop()

    loop = LOOPS[loop_name]()
    try:
        first, again = loop.run_until_complete(serve())
    finally:
        loop.close()
    assert first["39"] == "00" and again["39"] == "00"
    assert again["37"] == first["37"]                    # the same answer, not a new sale
    after = loader.load(data)
    account = after.state.cards["account"][idx]
    assert int(after.state.accounts["balance_fen"][account]) == before - 1234
