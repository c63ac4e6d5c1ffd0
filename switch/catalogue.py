"""The application catalogue (应用目录): which applications exist, what card functions they
need, where they are offered (the terminals that serve them) and whose cards they accept.

The catalogue lives in SQLite; :func:`build` turns it into the arrays the core enforces, and
:func:`change` makes a new version (add, retire, change acceptance) that the event loop
installs between two batches, so the next authorisation uses it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, TypeVar

import msgspec
import numpy as np

from onecard.core.state import APP_COUNT_MAX, APP_DTYPE, POLICY_DTYPE, PROVINCES_MAX
from onecard.protocols.enums import APPLICATION_FUNCTIONS, FUNCTION
from onecard.switch.errors import AdminError
from onecard.switch.reference import CROSS_BORDER, DOMAINS, JOINT_CATALOGUE_GROUPS
from onecard.switch.sql import SqlConnection

_S = TypeVar("_S", bound=msgspec.Struct)

SCOPE_TOKENS = ("province", "group", "cross_border", "all")


class CatalogueError(AdminError, ValueError):
    """A change the catalogue cannot take; the message says why. A ValueError too: the
    public listing answers a bad filter (a CatalogueError among others) 400."""


class NoApplication(CatalogueError):
    """The change names an application the catalogue does not have (the admin API's 404)."""


class ApplicationExists(CatalogueError):
    """An application added under a code the catalogue has (the admin API's 409)."""


Name = Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
# A mask of the card functions an application needs (protocols/enums.py FUNCTION).
Functions = Annotated[int, msgspec.Meta(ge=0, le=APPLICATION_FUNCTIONS)]
assert APPLICATION_FUNCTIONS & (APPLICATION_FUNCTIONS + 1) == 0   # low bits: le= is a mask test
LimitFen = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]


class NewApp(msgspec.Struct, forbid_unknown_fields=True):
    name_zh: Name
    name_en: Name
    domain: str
    scope: str
    functions: Functions = 0
    daily_limit_fen: LimitFen = 0


class AppChange(msgspec.Struct, forbid_unknown_fields=True):
    # Types are checked before anything is written: a bad value stored would stop the
    # catalogue from building, and with it the switch from starting.
    name_zh: Name | None = None
    name_en: Name | None = None
    scope: str | None = None
    daily_limit_fen: LimitFen | None = None
    active: bool | None = None


def _validated(fields: dict, kind: type[_S]) -> _S:
    try:
        return msgspec.convert(fields, kind)
    except msgspec.ValidationError as exc:
        raise CatalogueError(str(exc)) from None


def parse_scope(scope: str, provinces: list[int]) -> list[str]:
    tokens = [t.strip() for t in scope.split(",") if t.strip()]
    if not tokens:
        raise CatalogueError("scope must name at least one of "
                             f"{', '.join(SCOPE_TOKENS)} or prov:NN")
    for t in tokens:
        if t.startswith("prov:"):
            if not t[5:].isdigit() or int(t[5:]) not in provinces:
                raise CatalogueError(f"scope {t!r}: no such province in the region table")
        elif t not in SCOPE_TOKENS:
            raise CatalogueError(f"scope {t!r}: expected one of {', '.join(SCOPE_TOKENS)} "
                                 "or prov:NN")
    return tokens


def provinces(conn: SqlConnection) -> list[int]:
    """Province codes in index order (the core stores provinces by this index)."""
    return [r[0] for r in conn.execute("SELECT DISTINCT province FROM regions ORDER BY province")]


def accepted(scope: str, conn: SqlConnection) -> dict[int, set[int]]:
    """terminal province -> card provinces accepted, for one scope."""
    provs = provinces(conn)
    group_of = dict(conn.execute("SELECT DISTINCT province, grp FROM regions"))
    out: dict[int, set[int]] = {p: set() for p in provs}
    for token in parse_scope(scope, provs):
        for term_p in provs:
            if token == "province":
                out[term_p].add(term_p)
            elif token == "all":
                out[term_p].update(provs)
            elif token == "group" and group_of[term_p] in JOINT_CATALOGUE_GROUPS:
                out[term_p].update(p for p in provs if group_of[p] == group_of[term_p])
            elif token.startswith("prov:"):
                out[term_p].add(int(token[5:]))
        if token == "cross_border":
            for card_p, term_p in CROSS_BORDER:
                if card_p in out and term_p in out:
                    out[term_p].add(card_p)
    return out


def build(conn: SqlConnection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(apps, accept, policies) arrays for State.set_catalogue."""
    index = {p: i for i, p in enumerate(provinces(conn))}
    rows = conn.execute("SELECT idx, functions, scope, daily_limit_fen, active FROM catalogue "
                        "ORDER BY idx").fetchall()
    n = max((r[0] for r in rows), default=-1) + 1
    if n > APP_COUNT_MAX:
        raise CatalogueError(f"at most {APP_COUNT_MAX} applications")
    apps = np.zeros(n, dtype=APP_DTYPE)
    accept = np.zeros((APP_COUNT_MAX, PROVINCES_MAX), dtype="<u8")
    for idx, functions, scope, limit, active in rows:
        apps[idx] = (functions, active, 0, limit)
        if not active:
            continue
        for term_p, card_ps in accepted(scope, conn).items():
            for card_p in card_ps:
                accept[idx, index[term_p]] |= np.uint64(1 << index[card_p])
    prows = conn.execute("SELECT idx, base_fen, rules FROM policies ORDER BY idx").fetchall()
    policies = np.zeros(max(len(prows), 1), dtype=POLICY_DTYPE)
    for idx, base, rules in prows:
        rules = json.loads(rules)
        policies[idx]["base_fen"] = base
        policies[idx]["n_rules"] = len(rules)
        for k, rule in enumerate(rules):
            policies[idx]["rules"][k] = (*rule, 0)
    return apps, accept, policies


def version(conn: SqlConnection) -> int:
    row = conn.execute("SELECT MAX(version) FROM catalogue_history").fetchone()
    return int(row[0] or 0)


def listing(conn: SqlConnection, *, region: int | None = None, domain: str | None = None,
            place: str | None = None) -> dict:
    """The published catalogue: every active application with its accepted provinces and
    the places (by region and kind of place) it is offered at."""
    provs = provinces(conn)
    names = {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT code, name_zh, name_en FROM regions")}
    region_province = None
    if region is not None and region in provs:        # a province code: all its cities
        region_province = region
    elif region is not None:
        row = conn.execute("SELECT province FROM regions WHERE code = ?", (region,)).fetchone()
        if row is None:
            raise CatalogueError(f"region {region}: neither a province (e.g. 31) nor a region "
                                 f"code (e.g. 310000) in the region table")
        region_province = row[0]
    places: dict[str, list[dict]] = {}
    for code, region_code, where_kind, count in conn.execute(
            "SELECT t.app_code, r.code, t.place, COUNT(*) FROM terminals t "
            "JOIN regions r ON r.idx = t.region_idx GROUP BY t.app_code, r.code, t.place"):
        places.setdefault(code, []).append({"region": region_code,
                                            "province": region_code // 10000,
                                            "region_name": names[region_code][0],
                                            "place": where_kind, "terminals": count})
    for where in places.values():       # GROUP BY's order is SQLite's, not PostgreSQL's
        where.sort(key=lambda p: (p["region"], p["place"]))
    apps = []
    for code, name_zh, name_en, dom, functions, scope, limit, active in conn.execute(
            "SELECT code, name_zh, name_en, domain, functions, scope, daily_limit_fen, active "
            "FROM catalogue ORDER BY idx"):
        if not active or (domain and dom != domain):
            continue
        where = places.get(code, [])
        acc = accepted(scope, conn)
        if region is not None:
            assert region_province is not None      # set with region (province is NOT NULL)
            where = [p for p in where if region in (p["region"], p["province"])]
            if not acc.get(region_province) and not where:
                continue
        if place is not None:
            where = [p for p in where if p["place"] == place]
            if not where:
                continue
        apps.append({
            "code": code, "name_zh": name_zh, "name_en": name_en, "domain": dom,
            "card_functions": FUNCTION.names(functions & APPLICATION_FUNCTIONS),
            "scope": scope.split(","),
            "accepted": {str(t): sorted(c) for t, c in acc.items() if c},
            "daily_limit_fen": limit or None,
            "places": where,
        })
    return {"version": version(conn), "domains": list(DOMAINS), "provinces": provs,
            "applications": apps}


def change(conn: SqlConnection, operator: str, action: str, code: str,
           fields: dict, *, dry_run: bool = False) -> int:
    """Add, retire or change an application in one durable transaction; the new version.
    ``dry_run``: check it (CatalogueError) and change nothing."""
    provs = provinces(conn)
    row = conn.execute("SELECT idx, active FROM catalogue WHERE code = ?", (code,)).fetchone()
    if action == "add":
        if row is not None:
            raise ApplicationExists(f"application {code} exists")
        app = _validated(fields, NewApp)
        if app.domain not in DOMAINS:
            raise CatalogueError(f"domain {app.domain!r}: expected one of {DOMAINS}")
        parse_scope(app.scope, provs)
        idx = conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM catalogue").fetchone()[0]
        if idx >= APP_COUNT_MAX:
            raise CatalogueError(f"at most {APP_COUNT_MAX} applications")
    elif row is None:
        raise NoApplication(f"no application {code}")
    new_version = version(conn) + 1
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if action == "add":
            conn.execute("INSERT INTO catalogue VALUES (?,?,?,?,?,?,?,?,1,?)",
                         (code, idx, app.name_zh, app.name_en, app.domain, app.functions,
                          app.scope, app.daily_limit_fen, new_version))
        elif action == "retire":
            conn.execute("UPDATE catalogue SET active = 0, version = ? WHERE code = ?",
                         (new_version, code))
        elif action == "change":
            if not fields:
                raise CatalogueError(f"changeable: {', '.join(AppChange.__struct_fields__)}")
            ch = _validated(fields, AppChange)
            if ch.scope is not None:
                parse_scope(ch.scope, provs)
            for key in AppChange.__struct_fields__:
                value = getattr(ch, key)
                if value is not None:
                    conn.execute(f"UPDATE catalogue SET {key} = ? WHERE code = ?",
                                 (int(value) if key == "active" else value, code))
            conn.execute("UPDATE catalogue SET version = ? WHERE code = ?", (new_version, code))
        else:
            raise CatalogueError(f"unknown action {action!r}")
        conn.execute("INSERT INTO catalogue_history VALUES (?,?,?,?,?)",
                     (new_version, code, json.dumps({"action": action, **fields},
                                                    ensure_ascii=False), operator, now))
        conn.execute("ROLLBACK" if dry_run else "COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return new_version
