"""The admin API's card services, disbursements, top-ups, filings and audit log against a real
switch process, checked where it matters: on the next authorisation of terminals that are
already connected (ISO 8583 POS, native gates and service terminals), and after kill -9."""

import json
import socket

import numpy as np
import pytest

from onecard.core.state import CARD_CANCELLED, HOLDER_HMT
from onecard.protocols import native
from onecard.switch.reference import PROGRAMMES

from conftest import (
    BACKENDS,
    ON_BOTH_STORES,
    AdminClient,
    Supply,
    assert_problem,
    iso_balance,
    iso_session,
    native_session,
    start_switch,
)

pytestmark = pytest.mark.slow
STORES = BACKENDS                 # the shared switch (sw) on SQLite, then on PostgreSQL

OTHER_PROVINCES = (11, 12, 13, 32, 33, 34, 44)


def unknown_card(pan: str) -> str:
    """The same number with another check digit: never issued."""
    return pan[:-1] + str((int(pan[-1]) + 1) % 10)


def cancelled_card(supply: Supply) -> str:
    cards = supply.world.state.cards
    return str(int(cards["pan"][np.flatnonzero(cards["status"] == CARD_CANCELLED)[0]]))


def many_cards(supply: Supply, n: int) -> list[str]:
    return [supply.card(OTHER_PROVINCES[i % len(OTHER_PROVINCES)], min_balance=0)
            for i in range(n)]


def disburse(api: AdminClient, programme: str, period: str, items: list[tuple[str, int]]):
    return api.post("/admin/disbursements", {
        "programme": programme, "period": period,
        "items": [{"card": c, "amount_fen": a} for c, a in items]}, role="finance")


def results(reply) -> list[str]:
    assert reply.status == 200, reply.text
    return [i["result"] for i in reply.json()["items"]]


def is_masked(shown: str, pan: str) -> bool:
    return shown != pan and "*" in shown and shown.endswith(pan[-4:]) and pan not in shown


# ---- card lifecycle -----------------------------------------------------------------------------


def test_card_view_masks_the_number_and_unknown_cards_are_404(api, supply):
    pan = supply.card(31)
    r = api.get(f"/admin/cards/{pan}")
    assert r.status == 200 and pan not in r.text
    view = r.json()
    assert is_masked(view["card"], pan)
    assert view["status"] == "active" and view["region"] // 10000 == 31
    assert view["balance_fen"] >= 100_000 and view["deny_listed"] is False
    for method, path, role in (("GET", "", "ops"), ("POST", "/loss", "card"),
                               ("POST", "/replace", "card"), ("POST", "/ecard", "card")):
        r = api.call(method, f"/admin/cards/{unknown_card(pan)}{path}", role=role)
        assert_problem(r, 404)
        assert unknown_card(pan) not in r.text
    assert_problem(api.get("/admin/cards/62131x"), 400)


def test_loss_refuses_the_next_authorisation_on_open_iso_and_gate_connections(api, sw, supply):
    pan = supply.card(31)
    sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
    gate_info = supply.terminal("TRN-METRO", 31)
    exit_station = supply.terminal("TRN-METRO", 31).station_id
    gsock, gate = native_session(sw, gate_info)
    (paid,) = pos.send(pos.purchase(pan, 100))
    (tap_in,) = gate.send([gate.tap(pan, gate_info.station_id)])
    assert paid["39"] == "00" and tap_in.rc == "00"

    r = api.post(f"/admin/cards/{pan}/loss")
    assert r.status == 200 and r.json()["status"] == "lost"
    (refused,) = pos.send(pos.purchase(pan, 100))
    (tap_out,) = gate.send([gate.tap(pan, exit_station, native.TAP_OUT)])
    assert refused["39"] == "41" and tap_out.rc == "41"          # lost card
    assert api.view(pan)["status"] == "lost"
    assert_problem(api.post(f"/admin/cards/{pan}/loss"), 409)    # already lost

    r = api.post(f"/admin/cards/{pan}/unfreeze")
    assert r.status == 200 and r.json()["status"] == "active"
    (again,) = pos.send(pos.purchase(pan, 100))
    (tap_out,) = gate.send([gate.tap(pan, exit_station, native.TAP_OUT)])
    assert again["39"] == "00" and tap_out.rc == "00" and tap_out.fare_fen > 0

    assert api.post(f"/admin/cards/{pan}/freeze").json()["status"] == "frozen"
    (frozen,) = pos.send(pos.purchase(pan, 100))
    assert frozen["39"] == "05"
    assert api.post(f"/admin/cards/{pan}/unfreeze").json()["status"] == "active"
    sock.close()
    gsock.close()


def test_replace_keeps_the_accounts_and_refuses_the_old_number(api, sw, supply):
    old = supply.card(31)
    sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
    assert pos.send(pos.purchase(old, 100))[0]["39"] == "00"
    assert api.post(f"/admin/cards/{old}/loss").status == 200
    before = api.view(old)
    r = api.post(f"/admin/cards/{old}/replace")
    assert r.status == 201, r.text
    issued = r.json()
    new = issued["card_number"]
    assert new.isdigit() and new != old and old not in r.text
    assert is_masked(issued["card"], new)
    assert issued["status"] == "active" and issued["kind"] == "chip"
    assert issued["balance_fen"] == before["balance_fen"]
    assert issued["medical_fen"] == before["medical_fen"] and issued["bank"] == before["bank"]
    assert issued["region"] == before["region"]

    (refused,) = pos.send(pos.purchase(old, 100))
    assert refused["39"] == "14"                                  # the old number: invalid card
    (paid,) = pos.send(pos.purchase(new, 250))
    assert paid["39"] == "00"
    assert iso_balance(pos, new) == before["balance_fen"] - 250
    assert api.view(old)["status"] == "replaced"
    assert api.view(new)["balance_fen"] == api.view(old)["balance_fen"]
    assert_problem(api.post(f"/admin/cards/{old}/replace"), 409)
    assert_problem(api.post(f"/admin/cards/{old}/unfreeze"), 409)
    sock.close()


def test_electronic_card_shares_the_accounts_and_both_numbers_work(api, sw, supply):
    chip = supply.card(31)
    sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
    opening = api.view(chip)["balance_fen"]
    r = api.post(f"/admin/cards/{chip}/ecard")
    assert r.status == 201, r.text
    issued = r.json()
    ecard = issued["card_number"]
    assert ecard != chip and chip not in r.text
    assert issued["kind"] == "electronic" and "electronic" in issued["functions"]
    assert issued["balance_fen"] == opening
    (a,) = pos.send(pos.purchase(chip, 300))
    (b,) = pos.send(pos.purchase(ecard, 200))
    assert a["39"] == "00" and b["39"] == "00"
    assert iso_balance(pos, chip) == iso_balance(pos, ecard) == opening - 500
    assert api.view(chip)["status"] == "active"
    sock.close()


def test_hmt_residents_cards_go_through_the_lifecycle_like_locals(api, sw, supply):
    """A Hong Kong, Macao or Taiwan resident's card (HOLDER_HMT) and a local card of the
    same province get the same answers at every step of the card services."""
    hmt = supply.card(44, min_balance=0, flags=lambda f: (f & HOLDER_HMT) != 0)
    local = supply.card(44, min_balance=0, flags=lambda f: (f & HOLDER_HMT) == 0)
    sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 44))
    seen = []
    for pan in (hmt, local):
        steps = [results(disburse(api, "LONGEVITY", "2024-01", [(pan, 30_000)]))[0],
                 pos.send(pos.purchase(pan, 100))[0]["39"],
                 api.post(f"/admin/cards/{pan}/loss").json()["status"],
                 pos.send(pos.purchase(pan, 100))[0]["39"],
                 api.post(f"/admin/cards/{pan}/unfreeze").json()["status"],
                 pos.send(pos.purchase(pan, 100))[0]["39"]]
        new = api.post(f"/admin/cards/{pan}/replace").json()["card_number"]
        steps += [pos.send(pos.purchase(pan, 100))[0]["39"],
                  pos.send(pos.purchase(new, 100))[0]["39"],
                  api.view(new)["balance_fen"] == api.view(pan)["balance_fen"]]
        seen.append(steps)
    assert seen[0] == seen[1] == ["00", "00", "lost", "41", "active", "00", "14", "00", True]
    sock.close()


def test_bank_change(api, supply):
    pan = supply.card(31)
    r = api.post(f"/admin/cards/{pan}/bank", {"bank": "中国工商银行"})
    assert r.status == 200 and r.json()["bank"] == "中国工商银行"
    assert api.view(pan)["bank"] == "中国工商银行"
    for bank in ("", "x", "银" * 41, None):
        assert_problem(api.post(f"/admin/cards/{pan}/bank", {"bank": bank}), 422)
    assert api.view(pan)["bank"] == "中国工商银行"


def test_topup_clears_the_negative_balance_deny_flag(api, sw, supply):
    pan = supply.card(31, min_balance=1_000, balance_fen=lambda b: b < 400_000)
    sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
    bsock, bus = native_session(sw, supply.terminal("TRN-BUS", 31))
    balance = api.view(pan)["balance_fen"]
    assert pos.send(pos.purchase(pan, balance - 50))[0]["39"] == "00"
    (offline,) = bus.send([native.OfflineTap(bus.next_seq(), pan, 0, native.TAP_IN,
                                             1_700_000_000)])
    assert offline.rc == "00" and offline.balance_fen < 0
    view = api.view(pan)
    assert view["deny_listed"] is True and view["balance_fen"] == offline.balance_fen
    (denied,) = bus.send([bus.tap(pan)])
    assert denied.rc != "00"

    for amount in (0, -5, "1000", 1.5, True):
        assert_problem(api.post(f"/admin/cards/{pan}/topup", {"amount_fen": amount},
                                role="finance"), 422)
    r = api.post(f"/admin/cards/{pan}/topup", {"amount_fen": 1_000}, role="finance")
    assert r.status == 200, r.text
    assert r.json()["deny_listed"] is False
    assert r.json()["balance_fen"] == offline.balance_fen + 1_000
    (ride,) = bus.send([bus.tap(pan)])
    assert ride.rc == "00"
    assert_problem(api.post(f"/admin/cards/{cancelled_card(supply)}/topup",
                            {"amount_fen": 100}, role="finance"), 409)
    sock.close()
    bsock.close()


def test_filing_allows_remote_medical_settlement(api, sw, supply):
    pan = supply.card(31)
    hsock, hospital = native_session(sw, supply.terminal("MED-SETTLE", 32))
    (cash,) = hospital.send([native.Medical(hospital.next_seq(), pan, 20_000)])
    assert cash.rc == "M1"                                        # no filing for Jiangsu yet
    r = api.post("/admin/filings", {"card": pan, "province": 32})
    assert r.status == 201, r.text
    assert r.json()["provinces"] == [32] and pan not in r.text
    assert is_masked(r.json()["card"], pan)
    (settled,) = hospital.send([native.Medical(hospital.next_seq(), pan, 20_000)])
    assert settled.rc == "00"
    for body in ({"card": pan, "province": 99}, {"card": pan, "province": "32"},
                 {"card": pan}):
        assert_problem(api.post("/admin/filings", body), 422)
    assert_problem(api.post("/admin/filings", {"card": unknown_card(pan), "province": 32}),
                   404)
    hsock.close()


# ---- disbursements ----------------------------------------------------------------------------


def test_disbursement_credits_each_item_with_its_result(api, sw, supply):
    a, b = supply.card(31), supply.card(31)
    unknown, cancelled = unknown_card(supply.card(31)), cancelled_card(supply)
    opening = {c: api.view(c)["balance_fen"] for c in (a, b)}
    r = disburse(api, "CIVIL-RELIEF", "2026-11",
                 [(a, 1_000), (b, 2_500), (unknown, 100), (cancelled, 100), (a, 1_000)])
    assert results(r) == ["00", "00", "14", "14", "94"]
    body = r.json()
    assert body["credited"] == 2 and body["credited_fen"] == 3_500
    assert all(c not in r.text for c in (a, b, unknown, cancelled))
    assert api.view(a)["balance_fen"] == opening[a] + 1_000
    assert api.view(b)["balance_fen"] == opening[b] + 2_500
    sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
    assert iso_balance(pos, b) == opening[b] + 2_500
    sock.close()

    report = api.get("/admin/disbursements/CIVIL-RELIEF/2026-11")
    assert report.status == 200 and all(c not in report.text for c in (a, b, unknown))
    items = report.json()["items"]
    assert sorted((i["amount_fen"], i["result"]) for i in items) == [
        (100, "14"), (100, "14"), (1_000, "00"), (2_500, "00")]
    assert all(i["operator"] == "finance-operator" for i in items)
    assert all(isinstance(i["record"], int) for i in items if i["result"] == "00")
    totals = api.get("/admin/disbursements").json()
    (civil,) = [t for t in totals if t["programme"] == "CIVIL-RELIEF"]
    assert (civil["period"], civil["credited_items"], civil["credited_fen"]) == (
        202611, 2, 3_500)


def test_disbursement_is_idempotent_per_programme_period_and_card(api, supply):
    a, b = supply.card(31), supply.card(31)
    unknown = unknown_card(supply.card(31))
    opening = {c: api.view(c)["balance_fen"] for c in (a, b)}
    batch = [(a, 5_000), (b, 7_000), (unknown, 1)]
    assert results(disburse(api, "UNEMPLOYMENT", "2026-11", batch)) == ["00", "00", "14"]
    again = disburse(api, "UNEMPLOYMENT", "2026-11", batch)
    assert results(again) == ["94", "94", "14"] and again.json()["credited_fen"] == 0
    changed = disburse(api, "UNEMPLOYMENT", "2026-11", [(a, 9_999)])
    assert results(changed) == ["94"]
    assert api.view(a)["balance_fen"] == opening[a] + 5_000
    assert api.view(b)["balance_fen"] == opening[b] + 7_000
    # another period is another payment; another programme too
    assert results(disburse(api, "UNEMPLOYMENT", "2026-12", batch[:2])) == ["00", "00"]
    assert results(disburse(api, "LONGEVITY", "2026-11", [(a, 300)])) == ["00"]
    assert api.view(a)["balance_fen"] == opening[a] + 10_300
    assert api.view(b)["balance_fen"] == opening[b] + 14_000
    report = api.get("/admin/disbursements/UNEMPLOYMENT/2026-11").json()["items"]
    assert sorted((i["amount_fen"], i["result"]) for i in report) == [
        (1, "14"), (5_000, "00"), (7_000, "00")]
    totals = {(t["programme"], t["period"]): (t["credited_items"], t["credited_fen"])
              for t in api.get("/admin/disbursements").json()}
    assert totals[("UNEMPLOYMENT", 202611)] == (2, 12_000)
    assert totals[("UNEMPLOYMENT", 202612)] == (2, 12_000)


def simultaneous_posts(api: AdminClient, path: str, body: dict, role: str, n: int) -> list:
    """``n`` identical POSTs on ``n`` connections, each held back by its last byte until all
    are sent, so that the switch receives them together; their (status, JSON body)."""
    data = json.dumps(body).encode()
    raw = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           f"Authorization: Bearer {api.token(role)}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data
    socks = [socket.create_connection(("127.0.0.1", api.sw.http), timeout=30)
             for _ in range(n)]
    for s in socks:
        s.sendall(raw[:-1])
    assert api.get("/healthz", role=None).status == 200      # the prefixes have arrived
    for s in socks:
        s.sendall(raw[-1:])
    out = []
    for s in socks:
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        s.close()
        head, _, payload = reply.partition(b"\r\n\r\n")
        out.append((int(head.split()[1]), json.loads(payload)))
    return out


def test_concurrent_identical_batches_credit_each_card_once(api, supply):
    target = supply.card(31)
    filler = many_cards(supply, 150)
    opening = api.view(target)["balance_fen"]
    body = {"programme": "AGRI-SUBSIDY", "period": "2026-10",
            "items": [{"card": c, "amount_fen": a}
                      for c, a in [(target, 4_321)] + [(c, 1) for c in filler]]}
    replies = simultaneous_posts(api, "/admin/disbursements", body, "finance", 8)
    assert [status for status, _ in replies] == [200] * 8
    firsts = [doc["items"][0]["result"] for _, doc in replies]
    assert sorted(firsts) == ["00"] + ["94"] * 7, firsts
    assert sum(doc["credited"] for _, doc in replies) == len(body["items"])
    assert api.view(target)["balance_fen"] == opening + 4_321
    totals = {(t["programme"], t["period"]): (t["credited_items"], t["credited_fen"])
              for t in api.get("/admin/disbursements").json()}
    assert totals[("AGRI-SUBSIDY", 202610)] == (151, 4_321 + 150)


def test_every_programme_of_the_demo_data_is_offered(api, supply):
    pan = supply.card(31)
    opening = api.view(pan)["balance_fen"]
    for code, _, _ in PROGRAMMES:
        assert results(disburse(api, code, "2026-09", [(pan, 100)])) == ["00"], code
    assert api.view(pan)["balance_fen"] == opening + 100 * len(PROGRAMMES)
    totals = {t["programme"]: t for t in api.get("/admin/disbursements").json()
              if t["period"] == 202609}
    assert set(totals) == {code for code, _, _ in PROGRAMMES}
    for code, name_zh, name_en in PROGRAMMES:
        assert (totals[code]["name_zh"], totals[code]["name_en"]) == (name_zh, name_en)
        assert totals[code]["credited_items"] == 1
    doc = assert_problem(disburse(api, "BONUS", "2026-09", [(pan, 100)]), 422)
    assert all(code in doc["detail"] for code, _, _ in PROGRAMMES)


def test_disbursement_validation_credits_nothing(api, supply):
    pan = supply.card(31)
    opening = api.view(pan)["balance_fen"]
    good = {"programme": "PENSION", "period": "2026-08",
            "items": [{"card": pan, "amount_fen": 100}]}
    bad = [{"period": "2026-13"}, {"period": "26-08"}, {"period": ""}, {"programme": ""},
           {"items": []}, {"items": "all of them"},
           {"items": [{"card": "62131x", "amount_fen": 100}]},
           {"items": [{"card": pan, "amount_fen": 0}]},
           {"items": [{"card": pan, "amount_fen": 1.5}]},
           {"items": [{"card": pan, "amount_fen": True}]},
           {"items": [{"card": pan, "amount_fen": 100}, "not an item"]}]
    for change in bad:
        r = api.post("/admin/disbursements", {**good, **change}, role="finance")
        assert_problem(r, 422)
        assert pan not in r.text
    r = api.post("/admin/disbursements", {k: v for k, v in good.items() if k != "items"},
                 role="finance")
    assert_problem(r, 422)
    assert_problem(api.get("/admin/disbursements/PENSION/2026-13"), 400)
    assert api.view(pan)["balance_fen"] == opening
    assert api.get("/admin/disbursements/PENSION/2026-08").json()["items"] == []


def test_too_many_items_is_413(switch_dir, tmp_path, demo_dir, terminals):
    config = tmp_path / "onecard.toml"
    config.write_text("[admin]\ndisbursement_items_max = 3\n")
    supply = Supply(demo_dir, terminals)
    cards = [supply.card(31) for _ in range(4)]
    sw = start_switch(switch_dir, "--config", str(config))
    try:
        api = AdminClient(sw)
        opening = {c: api.view(c)["balance_fen"] for c in cards}
        assert_problem(disburse(api, "PENSION", "2026-11", [(c, 100) for c in cards]), 413)
        assert {c: api.view(c)["balance_fen"] for c in cards} == opening
        assert results(disburse(api, "PENSION", "2026-11",
                                [(c, 100) for c in cards[:3]])) == ["00"] * 3
    finally:
        sw.stop()


# ---- audit and masking ------------------------------------------------------------------------


def test_audit_lists_every_change_with_operator_and_role(api, supply):
    a, b, c = supply.card(31), supply.card(31), supply.card(31)
    before = len(api.get("/admin/audit?limit=10000").json())
    steps = [
        ("card", "loss", api.post(f"/admin/cards/{a}/loss")),
        ("card", "unfreeze", api.post(f"/admin/cards/{a}/unfreeze")),
        ("card", "bank", api.post(f"/admin/cards/{a}/bank", {"bank": "交通银行"})),
        ("card", "filing", api.post("/admin/filings", {"card": a, "province": 33})),
        ("finance", "topup", api.post(f"/admin/cards/{b}/topup", {"amount_fen": 10},
                                      role="finance")),
        ("finance", "disbursement", disburse(api, "LONGEVITY", "2026-07", [(b, 10)])),
        ("card", "replace", api.post(f"/admin/cards/{c}/replace")),
        ("catalogue", "catalogue", api.call("PATCH", "/admin/catalogue/SPORT-VENUE",
                                            {"daily_limit_fen": 0}, role="catalogue")),
    ]
    assert all(r.status in (200, 201) for *_, r in steps), [r.text for *_, r in steps]
    new_card = steps[6][2].json()["card_number"]
    r = api.get("/admin/audit?limit=10000")
    assert r.status == 200
    log = r.json()
    assert len(log) == before + len(steps)
    entries = list(reversed(log[:len(steps)]))                    # newest first
    for (role, word, _), entry in zip(steps, entries, strict=True):
        assert word in entry["action"], (word, entry)
        assert entry["operator"] == f"{role}-operator" and entry["role"] == role
        assert entry["at"]
    for pan, entry in ((a, entries[0]), (a, entries[2]), (b, entries[4]), (c, entries[6])):
        assert is_masked(entry["target"], pan), entry
    for pan in (a, b, c, new_card):
        assert pan not in r.text


def test_no_answer_carries_a_full_card_number_except_a_newly_issued_one(api, supply):
    pan = supply.card(31)
    answers = [
        api.get(f"/admin/cards/{pan}"),
        api.post(f"/admin/cards/{pan}/freeze"),
        api.post(f"/admin/cards/{pan}/unfreeze"),
        api.post(f"/admin/cards/{pan}/loss"),
        api.post(f"/admin/cards/{pan}/loss"),                      # 409: already lost
        api.post(f"/admin/cards/{pan}/unfreeze"),
        api.post(f"/admin/cards/{pan}/bank", {"bank": "招商银行"}),
        api.post(f"/admin/cards/{pan}/topup", {"amount_fen": 1}, role="finance"),
        api.post("/admin/filings", {"card": pan, "province": 34}),
        disburse(api, "HR-SUBSIDY", "2026-06", [(pan, 1)]),
        disburse(api, "HR-SUBSIDY", "2026-06", [(pan, 1)]),
        api.get("/admin/disbursements/HR-SUBSIDY/2026-06"),
    ]
    issued = []
    for action in ("ecard", "replace"):
        r = api.post(f"/admin/cards/{pan}/{action}")
        assert r.status == 201, r.text
        issued.append(r.json().pop("card_number"))
        answers.append(r)
    answers += [api.get(f"/admin/cards/{n}") for n in issued]
    answers.append(api.get("/admin/audit?limit=100"))
    for r in answers:
        assert r.status < 500, r.text
        assert pan not in r.text, r.text
        text = r.text
        for n in issued:
            text = text.replace(f'"card_number": "{n}"', "")
        assert all(n not in text for n in issued), r.text


# ---- durability -------------------------------------------------------------------------------


@ON_BOTH_STORES
def test_changes_survive_kill9(switch_dir, demo_dir, terminals):
    supply = Supply(demo_dir, terminals)
    paid, lost, old, warm = (supply.card(31) for _ in range(4))
    sw = start_switch(switch_dir)
    try:
        api = AdminClient(sw)
        # not the journal's first record (that case has its own test below)
        assert api.post(f"/admin/cards/{warm}/topup", {"amount_fen": 1},
                        role="finance").status == 200
        opening = api.view(paid)["balance_fen"]
        assert results(disburse(api, "PENSION", "2026-11", [(paid, 12_345)])) == ["00"]
        assert api.post(f"/admin/cards/{lost}/loss").status == 200
        r = api.post(f"/admin/cards/{old}/replace")
        assert r.status == 201
        new = r.json()["card_number"]
        balance = r.json()["balance_fen"]
        assert api.post(f"/admin/cards/{new}/bank", {"bank": "中国银行"}).status == 200
        sw.kill9()

        sw = start_switch(switch_dir)
        api = AdminClient(sw)
        assert api.view(paid)["balance_fen"] == opening + 12_345
        assert api.view(lost)["status"] == "lost"
        assert api.view(old)["status"] == "replaced"
        view = api.view(new)
        assert (view["status"], view["balance_fen"], view["bank"]) == (
            "active", balance, "中国银行")
        again = disburse(api, "PENSION", "2026-11", [(paid, 12_345)])
        assert results(again) == ["94"]
        assert api.view(paid)["balance_fen"] == opening + 12_345
        report = api.get("/admin/disbursements/PENSION/2026-11").json()["items"]
        assert [(i["amount_fen"], i["result"]) for i in report] == [(12_345, "00")]
        sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
        assert [pos.send(pos.purchase(c, 100))[0]["39"] for c in (lost, old, new, paid)] == [
            "41", "14", "00", "00"]
        sock.close()
    finally:
        sw.stop()


def test_first_record_of_a_fresh_switch_is_a_disbursement(switch_dir, demo_dir, terminals):
    """Record numbers start at 0: a disbursement that is the journal's very first record
    must still be awaited until durable and reported with its record number."""
    supply = Supply(demo_dir, terminals)
    pan = supply.card(31)
    sw = start_switch(switch_dir)
    try:
        api = AdminClient(sw)
        opening = api.view(pan)["balance_fen"]
        assert results(disburse(api, "PENSION", "2026-11", [(pan, 777)])) == ["00"]
        sw.kill9()
        sw = start_switch(switch_dir)
        api = AdminClient(sw)
        assert api.view(pan)["balance_fen"] == opening + 777
        assert results(disburse(api, "PENSION", "2026-11", [(pan, 777)])) == ["94"]
        (item,) = api.get("/admin/disbursements/PENSION/2026-11").json()["items"]
        assert item["result"] == "00" and isinstance(item["record"], int), item
        # newest first: the repeat wrote no record, the first one wrote record 0
        repeat, first = [e for e in api.get("/admin/audit").json()
                         if e["action"] == "disbursement"]
        assert repeat["record"] is None and first["record"] == 0, (repeat, first)
    finally:
        sw.stop()
