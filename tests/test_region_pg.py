"""Regional switches on the PostgreSQL store (issue 15): the same forwarding, stand-in and
advices as on SQLite, and the start-up resend reading the journal tail from PostgreSQL."""

import time

import pytest

from test_region_forward import JS, card_of, two_regions
from test_region_standin import TRANSIT, postings, reader, wait_posted

pytestmark = pytest.mark.slow
STAND_IN_TRIES = 20


@pytest.fixture(scope="module")
def regions(demo_dir, tmp_path_factory, pg_server):
    with two_regions(tmp_path_factory.mktemp("regionpg"), demo_dir, pg_server) as r:
        yield r


def test_stand_in_on_postgresql_is_resent_from_the_journal_and_posted_once(regions):
    g = reader(regions, 0)
    pan, _ = card_of(regions.dirs["js"], JS, nth=0, functions=TRANSIT)
    assert g.send([g.tap(pan)])[0].rc == "00"                  # forwarded to js
    regions.switches.pop("js").kill9()
    # Until NATS has seen js's connection go, a request still goes to its subscription and
    # times out (91, nothing decided: js is dead); then nobody serves it and sh stands in.
    for _ in range(STAND_IN_TRIES):
        (stood,) = g.send([g.tap(pan)])
        if stood.rc != "91":
            break
        time.sleep(0.1)
    assert stood.rc == "00"                                     # stood in for
    # sh crashes before a checkpoint: at its start the journal tail on PostgreSQL gives
    # the advice again (the stream drops the copy)
    regions.switches.pop("sh").kill9()
    sh = regions.start("sh")
    assert any("advices from the journal sent again" in line for line in sh.output), \
        "".join(sh.output[-20:])
    js = regions.start("js")
    assert wait_posted(js, 1) == 1
    regions.stop("sh")
    regions.stop("js")
    assert len(postings(regions, g.info.tid, stood.seq)) == 1
