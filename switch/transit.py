"""Transit networks as the core needs them: stations sorted by id and, per metro operator, a
fare matrix in fen between every pair of its stations (shortest network distance, priced by
the operator's distance bands)."""

from __future__ import annotations

import itertools
import json

import numpy as np

from onecard.core.state import OP_METRO, OPERATOR_DTYPE, STATION_DTYPE
from onecard.switch.reference import FareRule
from onecard.switch.sql import SqlConnection


def rule_to_json(rule: FareRule) -> str:
    return json.dumps({"base_km": rule.base_km, "base_fen": rule.base_fen,
                       "tiers": [list(t) for t in rule.tiers]})


def rule_from_json(text: str) -> FareRule:
    d = json.loads(text)
    return FareRule(d["base_km"], d["base_fen"], tuple(tuple(t) for t in d["tiers"]))


def network_distances(stations: list[tuple[str, str, float]]) -> tuple[list[str], np.ndarray]:
    """Shortest distances (km) between named stations of one operator.

    ``stations`` is (line, name, km along the line); a name on several lines is an interchange.
    """
    names = sorted({name for _, name, _ in stations})
    index = {name: i for i, name in enumerate(names)}
    n = len(names)
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0.0)
    by_line: dict[str, list[tuple[float, str]]] = {}
    for line, name, km in stations:
        by_line.setdefault(line, []).append((km, name))
    for stops in by_line.values():
        stops.sort()
        for (k1, a), (k2, b) in itertools.pairwise(stops):
            i, j = index[a], index[b]
            d = min(dist[i, j], k2 - k1)
            dist[i, j] = dist[j, i] = d
    for k in range(n):                       # Floyd-Warshall: networks have tens of stations
        dist = np.minimum(dist, dist[:, k:k + 1] + dist[k:k + 1, :])
    if np.isinf(dist).any():
        raise ValueError("a metro network is not connected")
    return names, dist


def build(conn: SqlConnection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(operators, stations, fares) arrays from the operators and stations tables."""
    op_rows = conn.execute("SELECT idx, kind, region_idx, flat_fare_fen, fare_rule "
                           "FROM operators ORDER BY idx").fetchall()
    operators = np.zeros(len(op_rows), dtype=OPERATOR_DTYPE)
    st_rows = conn.execute("SELECT id, operator_idx, line, name, km FROM stations ORDER BY id"
                           ).fetchall()
    stations = np.zeros(len(st_rows), dtype=STATION_DTYPE)
    fares: list[np.ndarray] = []
    offset = 0
    for pos, (idx, kind, region_idx, flat_fen, rule_json) in enumerate(op_rows):
        assert pos == idx, "operators.idx must be 0..n-1"
        o = operators[idx]
        o["kind"], o["region"], o["flat_fare_fen"] = kind, region_idx, flat_fen
        o["fare_fen_max"] = flat_fen
        mine = [(i, r) for i, r in enumerate(st_rows) if r[1] == idx]
        if mine:
            o["first_station"] = mine[0][0]
        if kind != OP_METRO:
            for i, _ in mine:
                stations[i]["operator"] = idx
            continue
        rule = rule_from_json(rule_json)
        names, dist = network_distances([(r[2], r[3], r[4]) for _, r in mine])
        local = {name: k for k, name in enumerate(names)}
        for i, r in mine:
            stations[i]["operator"] = idx
            stations[i]["local"] = local[r[3]]
        matrix = np.vectorize(rule.fare_fen, otypes=[np.int32])(dist)
        o["n_stations"] = len(names)
        o["fare_off"] = offset
        o["fare_fen_max"] = int(matrix.max())
        o["flat_fare_fen"] = rule.base_fen            # the least a trip costs: needed to enter
        fares.append(matrix.ravel())
        offset += matrix.size
    for i, r in enumerate(st_rows):
        stations[i]["id"] = r[0]
    all_fares = np.concatenate(fares).astype("<i4") if fares else np.zeros(0, dtype="<i4")
    return operators, stations, all_fares
