"""CLI commands that talk to a running switch's admin API: ``onecard disburse`` (a CSV of
credits for a programme and period) and ``onecard card`` (lifecycle at the service counter).

They go through HTTP rather than the data files because the switch owns its state: a change
made behind its back would be lost or, worse, contradict what it has in memory. The token is
``--token``, else ``$ONECARD_TOKEN`` (the tokens file keeps only hashes: a token is the one
printed when it was made, by the first start or ``onecard operators add|rotate``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from onecard.switch.admin import disbursements
from onecard.switch.config import Config
from onecard.switch.errors import AdminError

CHUNK_ITEMS = 10_000          # per request: progress every few seconds, small request bodies
TIMEOUT_S = 120


def _base_url(args, config: Config) -> str:
    if args.url:
        return args.url.rstrip("/")
    # Over TLS the switch's certificate is checked against the system's CAs, or the bundle
    # in $SSL_CERT_FILE (a private CA's certificate).
    scheme = "https" if config.admin.tls.enabled else "http"
    return f"{scheme}://{config.admin.host}:{config.server.http_port}"


def _token(args, config: Config, role: str) -> str:
    if args.token:
        return args.token
    if os.environ.get("ONECARD_TOKEN"):
        return os.environ["ONECARD_TOKEN"]
    # The tokens file keeps only hashes: the token is the one shown when it was made.
    raise AdminError(f"no token: pass --token or set ONECARD_TOKEN (an operator with the {role} "
                     "role; onecard operators add|rotate makes one)")


def call(url: str, token: str, method: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
    req = urllib.request.Request(f"{url}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            problem = json.loads(exc.read())
            detail = f"{problem.get('status')} {problem.get('title')}: {problem.get('detail')}"
        except (ValueError, AttributeError):
            detail = f"HTTP {exc.code}"
        raise AdminError(detail) from None
    except urllib.error.URLError as exc:
        raise AdminError(f"cannot reach the switch at {url}: {exc.reason}") from None


def cmd_disburse(args, config: Config) -> int:
    """Credit every row of a CSV (columns card, amount_fen), in chunks, printing progress;
    the per-item report goes to ``--report`` (CSV) and a summary to stdout. Safe to re-run:
    items already paid for the programme and period come back as 94 and are not paid again."""
    disbursements.parse_period(args.period)                 # fail before reading the file
    try:
        items = disbursements.parse_csv(Path(args.csv).read_text(encoding="utf-8-sig"))
    except ValueError as exc:
        raise AdminError(f"{args.csv}: {exc}") from None
    if not items:
        raise AdminError(f"{args.csv}: no items")
    url, token = _base_url(args, config), _token(args, config, "finance")
    results: list[dict] = []
    counts: dict[str, int] = {}
    credited_fen = 0
    for start in range(0, len(items), CHUNK_ITEMS):
        chunk = items[start:start + CHUNK_ITEMS]
        answer = call(url, token, "POST", "/admin/disbursements",
                      {"programme": args.programme, "period": args.period, "items": chunk})
        credited_fen += answer["credited_fen"]
        for item in answer["items"]:
            counts[item["result"]] = counts.get(item["result"], 0) + 1
        results.extend(answer["items"])
        print(f"onecard disburse: {len(results):,}/{len(items):,} items sent, "
              f"{counts.get('00', 0):,} credited", file=sys.stderr, flush=True)
    if args.report:
        with open(args.report, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            # The line number joins a result to its input row; the card stays masked.
            w.writerow(["line", "card", "amount_fen", "result", "meaning"])
            for line, item in enumerate(results, start=2):
                w.writerow([line, item["card"], item["amount_fen"], item["result"],
                            item["meaning"]])
    print(f"{args.programme} {args.period}: {len(items):,} items, "
          f"{counts.get('00', 0):,} credited ({credited_fen / 100:,.2f} yuan)")
    for code, n in sorted(counts.items()):
        print(f"  {code} {disbursements.RESULTS.get(code, '')}: {n:,}")
    return 0 if set(counts) <= {"00", "94"} else 1


CARD_ACTIONS = {          # action: (method, path suffix, role)
    "show": ("GET", "", "ops"),
    "loss": ("POST", "/loss", "card"),
    "unfreeze": ("POST", "/unfreeze", "card"),
    "freeze": ("POST", "/freeze", "card"),
    "replace": ("POST", "/replace", "card"),
    "ecard": ("POST", "/ecard", "card"),
    "bank": ("POST", "/bank", "card"),
    "topup": ("POST", "/topup", "finance"),
}


def cmd_card(args, config: Config) -> int:
    method, suffix, role = CARD_ACTIONS[args.action]
    body = None
    if args.action == "bank":
        if not args.bank:
            raise AdminError("card bank: --bank NAME is required")
        body = {"bank": args.bank}
    elif args.action == "topup":
        if args.amount_fen is None:
            raise AdminError("card topup: --amount-fen N is required")
        body = {"amount_fen": args.amount_fen}
    elif method == "POST":
        body = {}
    answer = call(_base_url(args, config), _token(args, config, role), method,
                  f"/admin/cards/{args.card}{suffix}", body)
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    return 0


def add_arguments(sub, common) -> None:
    def client(sp):
        common(sp)
        sp.add_argument("--url", help="the switch's HTTP address (default: from the config, "
                        "http://127.0.0.1:8580)")
        sp.add_argument("--token", help="operator token (default: $ONECARD_TOKEN)")
        return sp

    d = client(sub.add_parser("disburse", help="credit a programme's payments from a CSV "
                              "(card,amount_fen) through a running switch"))
    d.add_argument("--programme", required=True, help="programme code, e.g. PENSION")
    d.add_argument("--period", required=True, help="YYYY-MM")
    d.add_argument("--csv", required=True, help="CSV file with the header card,amount_fen")
    d.add_argument("--report", help="write the per-item results to this CSV file")
    d.set_defaults(admin_func=cmd_disburse)
    c = client(sub.add_parser("card", help="card service through a running switch: show, "
                              "report loss, unfreeze, replace, electronic card, bank, top-up"))
    c.add_argument("action", choices=tuple(CARD_ACTIONS))
    c.add_argument("card", help="card number")
    c.add_argument("--bank", help="new partner bank (action bank)")
    c.add_argument("--amount-fen", type=int, help="top-up amount in fen (action topup)")
    c.set_defaults(admin_func=cmd_card)


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        return args.admin_func(args, config)
    except BrokenPipeError:                 # output piped into head and the like
        return 0
    except (AdminError, ValueError, OSError) as exc:
        print(f"onecard {args.command}: {exc}", file=sys.stderr)
        return 1
