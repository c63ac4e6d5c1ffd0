"""Whatever JSON an operator (or a script gone wrong) sends, the admin API answers with a
success or a problem document, never a server error, and the switch keeps serving."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ADMIN_WRITES

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
