"""Whatever JSON an operator (or a script gone wrong) sends, the admin API answers with a
success or a problem document, never a server error, and the switch keeps serving."""

import json
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ADMIN_WRITES, assert_problem

pytestmark = pytest.mark.slow

KEYS = ("code", "name_zh", "name_en", "domain", "scope", "functions", "daily_limit_fen",
        "active", "bank", "amount_fen", "card", "province", "programme", "period", "items")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
    | st.sampled_from(["finance", "province,group", "PENSION", "2026-11", "31", 31, 44]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=4),
    max_leaves=12)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ADMIN_WRITES),
       body=st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6) | json_values)
def test_any_json_gets_an_answer_or_a_problem_never_a_500(api, world, route, body):
    method, path, role = route
    pan, _ = world.card(nth=3)
    r = api.call(method, path.format(pan=pan), body, role=role)
    assert r.status < 500, (method, path, body, r.status, r.text)
    if r.status >= 400:
        assert r.content_type.startswith("application/problem+json"), r.text
    assert api.get("/catalogue", role=None).status == 200       # and it still serves


HUGE = 2**70


@pytest.mark.parametrize(("method", "path", "body", "role", "status"), [
    ("POST", "/admin/cards/{pan}/topup", {"amount_fen": HUGE}, "finance", 422),
    ("POST", "/admin/cards/{pan}/topup", {"amount_fen": 2**62}, "finance", 422),
    ("POST", "/admin/disbursements", {"programme": "PENSION", "period": "2026-11",
                                      "items": [{"card": "{pan}", "amount_fen": HUGE}]},
     "finance", 422),
    ("POST", "/admin/filings", {"card": "{pan}", "province": HUGE}, "card", 422),
    ("PATCH", "/admin/catalogue/TOUR-SCENIC", {"daily_limit_fen": HUGE}, "catalogue", 422),
    ("POST", "/admin/catalogue", {"code": "X" * 500, "name_zh": "a", "name_en": "b",
                                  "domain": "finance", "scope": "province"}, "catalogue", 422),
    ("POST", "/admin/catalogue", {"code": 5, "name_zh": "a", "name_en": "b",
                                  "domain": "finance", "scope": "province"}, "catalogue", 422),
    ("GET", "/catalogue?region=" + "9" * 30, None, None, 400),
    ("GET", "/admin/cards/" + "9" * 30, None, "ops", 400),
])
def test_out_of_range_values_are_refused_by_name(api, world, method, path, body, role,
                                                 status):
    pan, _ = world.card(nth=4)
    if body is not None:
        body = {k: (v.format(pan=pan) if isinstance(v, str) else v) for k, v in body.items()}
        if "items" in body:
            body["items"] = [{"card": pan, "amount_fen": HUGE}]
    r = api.call(method, path.format(pan=pan), body, role=role)
    assert r.status == status, r.text
    assert r.content_type.startswith("application/problem+json")


# ---- hostile values (issue 13): every route answers 400/422 naming the field, stores nothing --

DEEP = 100_000
# The field of each write route that hostile values go into; the problem's detail names it.
FIELD = {"/admin/catalogue": "name_zh", "/admin/catalogue/TOUR-SCENIC": "name_zh",
         "/admin/cards/{pan}/bank": "bank", "/admin/cards/{pan}/topup": "amount_fen",
         "/admin/filings": "card", "/admin/disbursements": "items"}
BASE = {"/admin/catalogue": {"code": "X-HOSTILE", "name_zh": "甲", "name_en": "A",
                             "domain": "sports", "scope": "province"},
        "/admin/filings": {"card": "{pan}", "province": 32},
        "/admin/disbursements": {"programme": "PENSION", "period": "2026-11",
                                 "items": [{"card": "{pan}", "amount_fen": 1}]}}
HOSTILE = {
    "deep nesting": b"[" * DEEP + b"]" * DEEP,
    "5,000-digit integer": b"9" * 5000,
    "NUL byte": json.dumps("中国\x00银行").encode(),
    "control character": json.dumps("bank\x1b[31m").encode(),
    "line separator": json.dumps("bank\u2028name").encode(),
    "over-long string": json.dumps("银" * 100_000, ensure_ascii=False).encode(),
    "superscript digits": json.dumps("621311000000000²117").encode(),
    "Arabic-Indic digits": json.dumps("٦٢١٣١١٠٠٠٠٠٠٠٠٠٠١١٧").encode(),
    "lone surrogate": b'"\\ud800abc"',
}


def hostile_body(path: str, pan: str, value: bytes) -> bytes:
    """The route's valid base body (if any) with FIELD set to the raw JSON value."""
    field = FIELD[path]
    base = json.loads(json.dumps(BASE.get(path, {})).replace("{pan}", pan))
    if path == "/admin/disbursements" and value.startswith(b'"'):
        field = "items"                              # a card number inside an item
        value = b'[{"card": ' + value + b', "amount_fen": 1}]'
    base.pop(field, None)
    head = json.dumps(base, ensure_ascii=False).encode()[:-1]
    return head + (b", " if base else b"") + json.dumps(field).encode() + b": " + value + b"}"


DIGITS = ("superscript digits", "Arabic-Indic digits")      # hostile where a card number goes
CASES = [(route, kind) for route in ADMIN_WRITES for kind in sorted(HOSTILE)
         if kind not in DIGITS or "{pan}" in route[1] or FIELD[route[1]] in ("card", "items")]


@pytest.mark.parametrize(("route", "kind"), CASES)
def test_hostile_values_are_a_problem_naming_the_field(api, world, route, kind):
    method, path, role = route
    pan, _ = world.card(nth=5)
    before = api.view(pan)
    history = api.get("/admin/catalogue/history").json()
    raw = hostile_body(path, pan, HOSTILE[kind])
    target = path.format(pan=pan)
    if kind in DIGITS and "{pan}" in path:          # in the path, with a valid body
        target = path.format(pan=urllib.parse.quote(json.loads(HOSTILE[kind])))
        raw = json.dumps({"bank": "中国银行", "amount_fen": 1}).encode()
    r = api.call(method, target, role=role, raw=raw)
    assert r.status in (400, 422), (kind, r.status, r.text[:300])
    doc = assert_problem(r, r.status)
    if r.status == 422 and target == path.format(pan=pan):
        assert FIELD[path] in doc["detail"], doc
    assert "Traceback" not in r.text and pan not in r.text
    assert api.view(pan) == before                                  # nothing stored
    assert api.get("/admin/catalogue/history").json() == history


def test_a_nul_byte_is_never_stored_in_a_bank_name(api, world):
    pan, _ = world.card(nth=6)
    for bank in ("中国\x00银行", "\x00\x00", "银行\x7f", "bank\r\nX-Injected: 1"):
        doc = assert_problem(api.post(f"/admin/cards/{pan}/bank", {"bank": bank}), 422)
        assert "bank" in doc["detail"] and "control characters" in doc["detail"], doc
    assert api.view(pan)["bank"] != "中国\x00银行"
    assert "\x00" not in api.get("/admin/audit?limit=50").text


PATH_VALUES = ["621311000000000²117", "٦٢١٣١١٠٠٠٠٠٠٠٠٠٠١١٧", "6213\x001100000000", "9" * 5000,
               "%", "..", "２０２６-１１"]


PATH_ROUTES = [("GET", "/admin/cards/{v}", "ops", None),
               ("GET", "/admin/disbursements/{v}/2026-11", "ops", None),
               ("GET", "/admin/disbursements/PENSION/{v}", "ops", None),
               ("GET", "/admin/audit?limit={v}", "ops", None),
               ("GET", "/catalogue?region={v}", None, None),
               ("POST", "/admin/cards/{v}/bank", "card", {"bank": "中国银行"}),
               ("POST", "/admin/cards/{v}/topup", "finance", {"amount_fen": 1}),
               ("POST", "/admin/cards/{v}/loss", "card", None),
               ("PATCH", "/admin/catalogue/{v}", "catalogue", {"active": True})]


@pytest.mark.parametrize("value", PATH_VALUES)
@pytest.mark.parametrize(("method", "template", "role", "body"), PATH_ROUTES)
def test_hostile_path_and_query_values_are_400_or_404_never_500(api, method, template, role,
                                                                 body, value):
    path = template.format(v=urllib.parse.quote(value, safe=""))
    r = api.call(method, path, body, role=role)
    assert r.status in (400, 404, 422), (path, r.status, r.text[:300])
    assert_problem(r, r.status)
