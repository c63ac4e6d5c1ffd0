"""Write core/des_sboxes.h: the eight DES S-boxes as Boolean circuits for the bitsliced DES.

The circuits come from logic synthesis of the FIPS 46-3 tables (des_lanes.h's OC_SBOX) with
Berkeley ABC (Debian package berkeley-abc), not from any published circuit; this script runs
ABC, reads back its two-input network (BLIF) and writes each node as one C operation on
slices. It checks every circuit against the table on all 64 inputs before writing, and the
compiled circuits are checked again by the tests (oc_bs_sbox_check). Run by hand when the
circuits change (the build does not need ABC):

    python core/des_sboxes_gen.py [--deep SECONDS] [--from-blif DIR]

The committed header: S1-S4 from --deep 100, S5-S8 from the default flow (the deep search
was cut short for time); --deep on all eight is the next run.

``--deep`` adds ABC's &deepsyn (exact-style search, SECONDS per S-box) before mapping: fewer
gates, minutes of CPU. Gate counts go into the header.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

CORE = Path(__file__).resolve().parent
LIBRARY = """GATE ZERO 0 O=CONST0;
GATE ONE 0 O=CONST1;
GATE BUF 1 O=a; PIN * NONINV 1 999 1 0 1 0
GATE INV 1 O=!a; PIN * INV 1 999 1 0 1 0
GATE AND2 1 O=a*b; PIN * NONINV 1 999 1 0 1 0
GATE OR2 1 O=a+b; PIN * NONINV 1 999 1 0 1 0
GATE XOR2 1 O=a*!b+!a*b; PIN * UNKNOWN 1 999 1 0 1 0
GATE ANDN 1 O=a*!b; PIN * UNKNOWN 1 999 1 0 1 0
GATE XNOR2 2 O=a*b+!a*!b; PIN * UNKNOWN 1 999 1 0 1 0
GATE NAND2 2 O=!(a*b); PIN * INV 1 999 1 0 1 0
GATE NOR2 2 O=!(a+b); PIN * INV 1 999 1 0 1 0
GATE ORN 2 O=a+!b; PIN * UNKNOWN 1 999 1 0 1 0
"""
RESYN2 = "balance; rewrite; refactor; balance; rewrite; rewrite -z; balance; refactor -z; " \
         "rewrite -z; balance"
# Two-input truth tables (bit 2x+y is f(x, y)) as C, with their cost in operations.
BINARY = {0b1000: ("{x} & {y}", 1), 0b1110: ("{x} | {y}", 1), 0b0110: ("{x} ^ {y}", 1),
          0b1001: ("~({x} ^ {y})", 2), 0b0100: ("{x} & ~{y}", 1), 0b0010: ("{y} & ~{x}", 1),
          0b0001: ("~({x} | {y})", 2), 0b0111: ("~({x} & {y})", 2),
          0b1101: ("{x} | ~{y}", 2), 0b1011: ("{y} | ~{x}", 2),
          0b1100: ("{x}", 0), 0b1010: ("{y}", 0), 0b0011: ("~{x}", 1), 0b0101: ("~{y}", 1)}


def sbox_tables() -> list[list[int]]:
    text = (CORE / "des_lanes.h").read_text()
    start = text.index("OC_SBOX[8][64] = {") + len("OC_SBOX[8][64] = {")
    numbers = [int(n) for n in re.findall(r"\d+", text[start:text.index("};", start)])]
    assert len(numbers) == 512
    return [numbers[64 * i:64 * i + 64] for i in range(8)]


def output_bits(table: list[int], v: int) -> int:
    row, col = ((v >> 4) & 2) | (v & 1), (v >> 1) & 15
    return table[row * 16 + col]


def pla(table: list[int]) -> str:
    lines = [".i 6", ".o 4", ".ilb a1 a2 a3 a4 a5 a6", ".ob o1 o2 o3 o4", ".type fd"]
    lines += [f"{v:06b} {output_bits(table, v):04b}" for v in range(64)]
    return "\n".join([*lines, ".e", ""])


def synthesise(table: list[int], work: Path, deep: int) -> str:
    (work / "lib.genlib").write_text(LIBRARY)
    (work / "s.pla").write_text(pla(table))
    search = f"&get -n; &deepsyn -T {deep}; &put; " if deep else f"{RESYN2}; {RESYN2}; "
    script = (f"read_library lib.genlib; read_pla s.pla; strash; {search}dch; map -a; mfs2 -a; "
              "write_blif s.blif")
    subprocess.run(["berkeley-abc", "-c", script], cwd=work, check=True, capture_output=True)
    return (work / "s.blif").read_text()


def parse_blif(text: str) -> list[tuple[str, list[str], int]]:
    """(name, inputs, truth table) of every node in order; a table's bit i is the value for
    the inputs' bits of i, first input most significant."""
    nodes, current = [], None
    for line in text.replace("\\\n", " ").splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == ".names":
            current = (words[-1], words[1:-1], [])
            nodes.append(current)
        elif words[0].startswith("."):
            current = None
        elif current is not None:
            current[2].append(words)
    return topological([(name, inputs, truth(len(inputs), cover))
                        for name, inputs, cover in nodes])


def topological(nodes):
    """ABC may write a node before its inputs: each node after the nodes it reads."""
    by_name, done, order = {n[0]: n for n in nodes}, set(), []

    def visit(name):
        if name in done or name not in by_name:
            return
        done.add(name)
        for i in by_name[name][1]:
            visit(i)
        order.append(by_name[name])

    for name in by_name:
        visit(name)
    return order


def truth(n: int, cover: list[list[str]]) -> int:
    on = not cover or cover[0][-1] == "1"
    table = 0
    for v in range(1 << n):
        bits = f"{v:0{n}b}" if n else ""
        patterns = [row[0] if n else "" for row in cover]
        hit = any(all(c in ("-", b) for c, b in zip(p, bits, strict=True)) for p in patterns)
        table |= int(hit == on and bool(cover)) << v
    return table


def node_c(inputs: list[str], table: int) -> tuple[str, int]:
    if not inputs:
        return ("~(BS_T){0}" if table & 1 else "(BS_T){0}"), 0
    if len(inputs) == 1:
        return {0b10: (inputs[0], 0), 0b01: (f"~{inputs[0]}", 1)}[table]
    expr, cost = BINARY[table]
    return expr.format(x=inputs[0], y=inputs[1]), cost


def simulate(nodes, table: list[int]) -> None:
    for v in range(64):
        values = {f"a{j + 1}": (v >> (5 - j)) & 1 for j in range(6)}
        for name, inputs, tt in nodes:
            index = sum(values[i] << (len(inputs) - 1 - k) for k, i in enumerate(inputs))
            values[name] = (tt >> index) & 1
        got = sum(values[f"o{m + 1}"] << (3 - m) for m in range(4))
        assert got == output_bits(table, v), (v, got)


def function_c(box: int, nodes) -> tuple[str, int]:
    body, cost, local = [], 0, {}
    for name, inputs, tt in nodes:
        expr, c = node_c([local.get(i, i) for i in inputs], tt)
        cost += c
        local[name] = name if not name.startswith("o") else f"t_{name}"
        body.append(f"    BS_T {local[name]} = {expr};")
    body += [f"    *o{m} ^= {local.get(f'o{m}', f'o{m}')};" for m in range(1, 5)]
    head = (f"BS_ATTR static inline void BS_FN(oc_bs_s{box})(BS_T a1, BS_T a2, BS_T a3, "
            "BS_T a4, BS_T a5, BS_T a6,\n        BS_T* o1, BS_T* o2, BS_T* o3, BS_T* o4) {")
    return "\n".join([f"/* S{box}: {cost} operations */", head, *body, "}", ""]), cost


def header(functions: list[str], costs: list[int], how: str) -> str:
    calls = "\n".join(f"    case {b}: BS_FN(oc_bs_s{b + 1})(a[0], a[1], a[2], a[3], a[4], a[5], "
                      "&out[0], &out[1], &out[2], &out[3]); break;" for b in range(8))
    return (f"/* Generated by core/des_sboxes_gen.py ({how}); do not edit. The DES S-boxes as\n"
            f" * circuits on slices (BS_T, see des_bitslice_impl.h): operations per S-box\n"
            f" * {' '.join(map(str, costs))}, {sum(costs)} in all. Each XORs its four outputs\n"
            " * (o1 the most significant) into the places the P permutation sends them. */\n\n"
            + "\n".join(functions)
            + "\n/* S-box `box` (from 0) on a[0..5], for the self-check. */\n"
            "BS_ATTR static void BS_FN(oc_bs_sbox)(int box, const BS_T* a, BS_T* out) {\n"
            f"    switch (box) {{\n{calls}\n    }}\n}}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deep", type=int, default=0)
    p.add_argument("--from-blif", type=Path, help="s1.blif .. s8.blif already synthesised")
    args = p.parse_args()
    functions, costs = [], []
    for box, table in enumerate(sbox_tables(), 1):
        if args.from_blif:
            blif = (args.from_blif / f"s{box}.blif").read_text()
        else:
            with tempfile.TemporaryDirectory() as work:
                blif = synthesise(table, Path(work), args.deep)
        nodes = parse_blif(blif)
        simulate(nodes, table)
        text, cost = function_c(box, nodes)
        functions.append(text)
        costs.append(cost)
    how = f"ABC &deepsyn {args.deep} s" if args.deep else "ABC resyn2, dch, map, mfs2"
    (CORE / "des_sboxes.h").write_text(header(functions, costs, how))
    print(f"des_sboxes.h: {costs}, {sum(costs)} operations")


if __name__ == "__main__":
    main()
