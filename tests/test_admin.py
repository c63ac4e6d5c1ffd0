"""The admin API over HTTP against a real switch process: the public catalogue, catalogue
changes (versioned, effective on the very next authorisation of already-connected terminals,
surviving a restart), operator tokens and roles, problem documents and validation."""

import pytest

from onecard.protocols import native
from onecard.switch.reference import CATALOGUE, DOMAINS

from conftest import (
    ADMIN_WRITES,
    BACKENDS,
    AdminClient,
    Supply,
    assert_problem,
    iso_session,
    native_session,
    start_switch,
)

pytestmark = pytest.mark.slow
STORES = BACKENDS                 # the shared switch (sw) on SQLite, then on PostgreSQL

FIN_PAY_SCOPE = "province,group,cross_border"


def codes(listing: dict) -> list[str]:
    return [a["code"] for a in listing["applications"]]


def history(api: AdminClient) -> list[dict]:
    r = api.get("/admin/catalogue/history")
    assert r.status == 200, r.text
    return r.json()


def change(api: AdminClient, method: str, code: str, body=None) -> dict:
    path = "/admin/catalogue" if method == "POST" else f"/admin/catalogue/{code}"
    r = api.call(method, path, body, role="catalogue")
    assert r.status in (200, 201), (r.status, r.text)
    return r.json()


# ---- the public catalogue ---------------------------------------------------------------------


def test_public_catalogue_needs_no_token_and_lists_every_active_application(api):
    r = api.get("/catalogue", role=None)
    assert r.status == 200 and r.content_type.startswith("application/json")
    listing = r.json()
    assert isinstance(listing["version"], int)
    assert listing["domains"] == list(DOMAINS)
    assert sorted(codes(listing)) == sorted(e.code for e in CATALOGUE)
    fin = next(a for a in listing["applications"] if a["code"] == "FIN-PAY")
    assert fin["scope"] == FIN_PAY_SCOPE.split(",")
    assert fin["card_functions"] == ["financial"]
    assert 44 in fin["accepted"]["81"]                  # Guangdong cards in Hong Kong
    assert {32, 33, 34} <= set(fin["accepted"]["31"])   # the YRD joint catalogue
    assert {p["province"] for p in fin["places"]} >= {11, 31, 44, 81, 82}


def test_catalogue_filters_by_province_region_domain_and_place(api):
    by_province = api.get("/catalogue?region=31", role=None).json()
    assert {"FIN-PAY", "CUL-MUSEUM", "TRN-METRO", "TRN-FERRY"} <= set(codes(by_province))
    places = [p for a in by_province["applications"] for p in a["places"]]
    assert places and {p["province"] for p in places} == {31}

    by_region = api.get("/catalogue?region=310000", role=None).json()
    assert "FIN-PAY" in codes(by_region)
    assert {p["region"] for a in by_region["applications"] for p in a["places"]} == {310000}

    finance = api.get("/catalogue?domain=finance", role=None).json()
    assert codes(finance) == ["FIN-PAY"]
    culture = api.get("/catalogue?domain=culture%20and%20tourism", role=None).json()
    assert set(codes(culture)) == {"CUL-MUSEUM", "CUL-LIBRARY", "TOUR-SCENIC"}

    museums = api.get("/catalogue?place=museum&region=31", role=None).json()
    assert codes(museums) == ["CUL-MUSEUM"]
    (museum,) = museums["applications"]
    assert museum["places"] and all(p["place"] == "museum" and p["province"] == 31
                                    for p in museum["places"])


@pytest.mark.parametrize("region", ["99", "999999", "abc"])
def test_catalogue_unknown_region_is_a_400_problem(api, region):
    doc = assert_problem(api.get(f"/catalogue?region={region}", role=None), 400)
    assert region in doc["detail"] or "region" in doc["detail"]


# ---- catalogue changes ------------------------------------------------------------------------


def test_retiring_an_application_refuses_the_next_request_on_connected_terminals(api, sw,
                                                                                   supply):
    pan = supply.card(31)
    sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
    vsock, museum = native_session(sw, supply.terminal("CUL-MUSEUM", 31))
    (ok,) = pos.send(pos.purchase(pan, 100))
    (entry,) = museum.send([native.VenueEntry(museum.next_seq(), pan)])
    assert ok["39"] == "00" and entry.rc == "00"
    before = history(api)
    version = api.get("/catalogue", role=None).json()["version"]
    try:
        assert change(api, "DELETE", "FIN-PAY") == {"code": "FIN-PAY", "action": "retire",
                                                    "version": version + 1}
        assert change(api, "DELETE", "CUL-MUSEUM")["version"] == version + 2
        (refused,) = pos.send(pos.purchase(pan, 100))
        (no_entry,) = museum.send([native.VenueEntry(museum.next_seq(), pan)])
        assert refused["39"] == "58"                    # not permitted to terminal
        assert no_entry.rc == "58"
        listing = api.get("/catalogue", role=None).json()
        assert listing["version"] == version + 2
        assert "FIN-PAY" not in codes(listing) and "CUL-MUSEUM" not in codes(listing)
    finally:
        change(api, "PATCH", "FIN-PAY", {"active": True})
        change(api, "PATCH", "CUL-MUSEUM", {"active": True})
    (again,) = pos.send(pos.purchase(pan, 100))
    (entry,) = museum.send([native.VenueEntry(museum.next_seq(), pan)])
    assert again["39"] == "00" and entry.rc == "00"
    new = history(api)[len(before):]
    assert [(h["version"], h["code"], h["change"]["action"]) for h in new] == [
        (version + 1, "FIN-PAY", "retire"), (version + 2, "CUL-MUSEUM", "retire"),
        (version + 3, "FIN-PAY", "change"), (version + 4, "CUL-MUSEUM", "change")]
    assert all(h["operator"] == "catalogue-operator" and h["at"] for h in new)
    assert new[2]["change"]["active"] in (True, 1)
    sock.close()
    vsock.close()


def test_narrowing_acceptance_scope_refuses_other_provinces_cards_at_once(api, sw, supply):
    yrd = supply.card(32)                               # a Jiangsu card ...
    local = supply.card(31)
    sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))   # ... at a Shanghai POS
    (before,) = pos.send(pos.purchase(yrd, 100))
    assert before["39"] == "00"
    try:
        v = change(api, "PATCH", "FIN-PAY", {"scope": "province"})["version"]
        last = history(api)[-1]
        assert (last["version"], last["code"], last["operator"], last["change"]) == (
            v, "FIN-PAY", "catalogue-operator", {"action": "change", "scope": "province"})
        (narrowed,) = pos.send(pos.purchase(yrd, 100))
        (own,) = pos.send(pos.purchase(local, 100))
        assert narrowed["39"] == "62"                   # restricted card: not accepted here
        assert own["39"] == "00"
    finally:
        change(api, "PATCH", "FIN-PAY", {"scope": FIN_PAY_SCOPE})
    (restored,) = pos.send(pos.purchase(yrd, 100))
    assert restored["39"] == "00"
    sock.close()


def test_adding_an_application_publishes_a_new_version(api):
    version = api.get("/catalogue", role=None).json()["version"]
    body = {"code": "SPORT-SWIM", "name_zh": "游泳馆", "name_en": "Swimming pools",
            "domain": "sports", "functions": 1, "scope": "province,group",
            "daily_limit_fen": 20_000}
    assert change(api, "POST", "", body) == {"code": "SPORT-SWIM", "action": "add",
                                             "version": version + 1}
    listing = api.get("/catalogue?domain=sports", role=None).json()
    assert listing["version"] == version + 1
    swim = next((a for a in listing["applications"] if a["code"] == "SPORT-SWIM"), None)
    assert swim is not None, codes(listing)
    assert swim["name_en"] == "Swimming pools" and swim["daily_limit_fen"] == 20_000
    assert swim["scope"] == ["province", "group"] and swim["card_functions"] == ["financial"]
    last = history(api)[-1]
    assert last["version"] == version + 1 and last["change"]["action"] == "add"
    assert_problem(api.post("/admin/catalogue", body, role="catalogue"), 409)


def test_catalogue_change_refusals(api):
    version = api.get("/catalogue", role=None).json()["version"]
    assert_problem(api.call("PATCH", "/admin/catalogue/NO-SUCH", {"scope": "all"},
                            role="catalogue"), 404)
    assert_problem(api.call("DELETE", "/admin/catalogue/NO-SUCH", role="catalogue"), 404)
    for body in ({"scope": "everywhere"}, {"scope": "prov:99"}, {"daily_limit_fen": -1},
                 {"idx": 3}, {}):
        assert_problem(api.call("PATCH", "/admin/catalogue/TOUR-SCENIC", body,
                                role="catalogue"), 422)
    base = {"code": "X-NEW", "name_zh": "新", "name_en": "New", "domain": "sports",
            "scope": "province"}
    assert_problem(api.post("/admin/catalogue", {**base, "domain": "gambling"},
                            role="catalogue"), 422)
    assert_problem(api.post("/admin/catalogue", {"code": "X-NEW"}, role="catalogue"), 422)
    assert_problem(api.post("/admin/catalogue", {**base, "code": ""}, role="catalogue"), 422)
    assert api.get("/catalogue", role=None).json()["version"] == version   # nothing changed


WRONG_TYPES = [
    ("PATCH", "/admin/catalogue/TOUR-SCENIC", {"daily_limit_fen": "lots"}),
    ("PATCH", "/admin/catalogue/TOUR-SCENIC", {"scope": 5}),
    ("PATCH", "/admin/catalogue/TOUR-SCENIC", {"active": "yes"}),
    ("PATCH", "/admin/catalogue/TOUR-SCENIC", {"name_zh": 5}),
    ("POST", "/admin/catalogue", {"code": "X-BAD", "name_zh": "坏", "name_en": "Bad",
                                  "domain": "sports", "scope": "province", "functions": "x"}),
]


def test_catalogue_values_of_the_wrong_type_are_422_and_change_nothing(running_switch):
    api = AdminClient(running_switch)
    version = api.get("/catalogue", role=None).json()["version"]
    answers = []
    for method, path, body in WRONG_TYPES:
        r = api.call(method, path, body, role="catalogue")
        answers.append((body, r.status, r.content_type.split(";")[0]))
    assert answers == [(body, 422, "application/problem+json") for _, _, body in WRONG_TYPES]
    assert api.get("/catalogue", role=None).json()["version"] == version
    # the catalogue still takes changes: nothing half-written into it
    r = api.call("PATCH", "/admin/catalogue/TOUR-SCENIC", {"daily_limit_fen": 0},
                 role="catalogue")
    assert (r.status, r.text) == (200, r.text) and r.json()["version"] == version + 1


def test_catalogue_change_survives_kill9_and_restart(switch_dir, demo_dir, terminals):
    supply = Supply(demo_dir, terminals)
    sw = start_switch(switch_dir)
    yrd = supply.card(32)
    try:
        api = AdminClient(sw)
        v = change(api, "PATCH", "FIN-PAY", {"scope": "province"})["version"]
        change(api, "DELETE", "CUL-LIBRARY")
        sw.kill9()
        sw = start_switch(switch_dir)
        api = AdminClient(sw)
        assert api.get("/catalogue", role=None).json()["version"] == v + 1
        assert [h["code"] for h in history(api)[-2:]] == ["FIN-PAY", "CUL-LIBRARY"]
        sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
        lsock, library = native_session(sw, supply.terminal("CUL-LIBRARY", 31))
        (narrowed,) = pos.send(pos.purchase(yrd, 100))
        (no_entry,) = library.send([native.VenueEntry(library.next_seq(), yrd)])
        assert narrowed["39"] == "62" and no_entry.rc == "58"
        change(api, "PATCH", "FIN-PAY", {"scope": FIN_PAY_SCOPE})
        (restored,) = pos.send(pos.purchase(yrd, 100))
        assert restored["39"] == "00"
        sock.close()
        lsock.close()
    finally:
        sw.stop()


# ---- tokens, roles and problem documents ------------------------------------------------------


GUARDED = [
    ("GET", "/admin/catalogue/history", None, "ops"),
    ("GET", "/admin/audit", None, "ops"),
    ("GET", "/admin/disbursements", None, "ops"),
    ("POST", "/admin/catalogue", {"code": "Y"}, "catalogue"),
    ("PATCH", "/admin/catalogue/FIN-PAY", {"scope": "province"}, "catalogue"),
    ("DELETE", "/admin/catalogue/FIN-PAY", None, "catalogue"),
    ("POST", "/admin/cards/{pan}/loss", None, "card"),
    ("POST", "/admin/cards/{pan}/replace", None, "card"),
    ("POST", "/admin/filings", {"card": "{pan}", "province": 32}, "card"),
    ("POST", "/admin/cards/{pan}/topup", {"amount_fen": 100}, "finance"),
    ("POST", "/admin/disbursements", {"programme": "PENSION", "period": "2026-11",
                                      "items": [{"card": "{pan}", "amount_fen": 1}]}, "finance"),
]


def fill(body, pan: str):
    if isinstance(body, dict):
        return {k: fill(v, pan) for k, v in body.items()}
    if isinstance(body, list):
        return [fill(v, pan) for v in body]
    return body.replace("{pan}", pan) if isinstance(body, str) else body


@pytest.mark.parametrize("method,path,body,role", GUARDED)
def test_tokens_and_roles(api, supply, method, path, body, role):
    pan = supply.card(31)
    path, body = path.replace("{pan}", pan), fill(body, pan)
    version = api.get("/catalogue", role=None).json()["version"]
    view = api.view(pan)
    for auth in (None, "Basic b3BzOm9wcw==", "Bearer"):
        r = api.call(method, path, body, role=None, auth=auth)
        assert_problem(r, 401)
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers
    r = api.call(method, path, body, role=None, auth="Bearer not-a-token-of-anyone-here")
    assert_problem(r, 401)
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
    for other in {"ops", "card", "finance", "catalogue"} - {role}:
        doc = assert_problem(api.call(method, path, body, role=other), 403)
        assert role in doc["detail"], doc
    # nothing happened
    assert api.get("/catalogue", role=None).json()["version"] == version
    assert api.view(pan) == view


@pytest.mark.parametrize("method,path,role", ADMIN_WRITES)
@pytest.mark.parametrize("raw", [b"{not json", b"", "\u4e2d".encode("gbk"), b"[1, 2]"])
def test_malformed_bodies_are_400(api, method, path, role, raw):
    path = path.format(pan="6213110000000000117")
    assert_problem(api.call(method, path, role=role, raw=raw), 400)


def test_unknown_paths_and_methods_are_problem_documents(api):
    assert_problem(api.get("/admin/nothing-here"), 404)
    r = api.call("PUT", "/admin/catalogue/FIN-PAY", {"scope": "all"}, role="catalogue")
    assert_problem(r, 405)


def test_audit_limit_must_be_a_number(api):
    assert_problem(api.get("/admin/audit?limit=many"), 400)
    r = api.get("/admin/audit?limit=1")
    assert r.status == 200 and len(r.json()) <= 1


def test_problem_bodies_never_echo_a_card_number(api, supply):
    pan = supply.card(31)
    unknown = pan[:-1] + str((int(pan[-1]) + 1) % 10)     # wrong check digit: never issued
    for method, path in (("GET", f"/admin/cards/{unknown}"),
                         ("POST", f"/admin/cards/{unknown}/loss")):
        r = api.call(method, path, role="ops" if method == "GET" else "card")
        assert_problem(r, 404)
        assert unknown not in r.text, r.text
