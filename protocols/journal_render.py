"""Render what is derived from the journal table (``protocols/journal.py``): the core's C
structs (``core/records.pxd``), the module that reports where the compiler put them
(``core/records.pyx``), and the format's documentation (``protocols/JOURNAL.md``).

``setup.py`` writes them on every build, so the core always compiles against the table; the
files are committed so that they can be read, and ``tests/test_journal_schema.py`` fails when
one is stale. By hand::

    python -m onecard.protocols.journal_render           # write what changed
    python -m onecard.protocols.journal_render --check   # exit 1 if anything is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onecard.protocols.journal import (
    CARD_ADMIN_ACTIONS,
    FLAGS,
    FORMAT,
    HEAD,
    HEAD_BYTES,
    KINDS,
    LAYOUTS,
    NONE,
    RECORD_BYTES,
    RING_FLAGS_MASK,
    TYPES,
    Field,
    layout_fields,
    place,
)

GENERATED = ("Generated from protocols/journal.py by protocols/journal_render.py: do not "
             "edit.")
STDINT = "from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t"


def struct_name(layout: str) -> str:
    return "J" + "".join(part.title() for part in layout.split("_"))


def _c_field(f: Field) -> str:
    ctype = TYPES[f.type][2]
    decl = f"{ctype} {f.name}[{TYPES[f.type][0]}]" if f.type == "key16" else f"{ctype} {f.name}"
    return f"    {decl:<36} # {f.unit}" if f.unit else f"    {decl}"


def _kinds_of(layout: str) -> str:
    return ", ".join(k.name for k in KINDS if k.layout == layout)


def render_pxd() -> str:
    lines = [f"# {GENERATED}", "# The journal record: a struct per layout (head first), the JRec "
             "union of them all.", STDINT, "", "cdef enum:",
             f"    JOURNAL_FORMAT = {FORMAT}", f"    JREC_BYTES = {RECORD_BYTES}",
             f"    JHEAD_BYTES = {HEAD_BYTES}", f"    NONE32 = {NONE:#x}"]
    lines += [f"    JF_{name} = {bit:#04x}" for name, bit, _ in FLAGS]
    lines.append(f"    JF_RING_MASK = {RING_FLAGS_MASK:#04x}")
    lines += [f"    CA_{name} = {value}" for name, value, _ in CARD_ADMIN_ACTIONS]
    for layout, fields in LAYOUTS.items():
        kinds = _kinds_of(layout)
        if not fields:
            kinds = f"every record's head ({kinds}: no more)"
        lines += ["", f"cdef struct {struct_name(layout)}:    # {kinds}"]
        lines += [_c_field(f) for f in HEAD + fields]
    lines += ["", "cdef union JRec:"]
    lines += [f"    {struct_name(layout)} {layout}" for layout in LAYOUTS]
    lines += [f"    uint8_t raw[{RECORD_BYTES}]", ""]
    return "\n".join(lines)


def render_pyx() -> str:
    lines = ["# cython: language_level=3", f"# {GENERATED}",
             '"""Where the C compiler put every field of the journal record, as (offset, bytes) '
             "per layout:\nchecked against protocols/journal.py when onecard.core.journal is "
             'imported."""', "", "cdef JRec _r", "",
             "", "cdef size_t at(const void* p):",
             "    return <size_t>p - <size_t>&_r", "", "",
             "RECORD_BYTES = sizeof(JRec)", "LAYOUT = {"]
    for layout in LAYOUTS:
        lines.append(f'    "{layout}": {{')
        for f, _ in layout_fields(layout):
            member = f"_r.{layout}.{f.name}"
            lines.append(f'        "{f.name}": (at(&{member}),')
            lines.append(f"{' ' * (len(f.name) + 13)}sizeof({member})),")
        lines.append("    },")
    lines += ["}", ""]
    return "\n".join(lines)


def _md_table(placed: list[tuple[Field, int]], v1: bool = True) -> list[str]:
    out = ["| offset | field | type | unit | meaning | version 1 |",
           "|---:|---|---|---|---|---|"]
    for f, offset in placed:
        unit = f.unit.replace("|", "\\|")
        out.append(f"| {offset} | `{f.name}` | {f.type} | {unit} | {f.doc} | "
                   f"{'`' + f.v1 + '`' if v1 else ''} |")
    return out


def render_md() -> str:
    lines = [
        "# The journal record format", "",
        f"<!-- {GENERATED.replace(chr(10) + '# ', ' ')} -->", "",
        f"Format version **{FORMAT}**. Every decision that changes state (and every declined "
        "request, for retransmissions) is one fixed "
        f"{RECORD_BYTES}-byte record, little-endian, numbered from 0 without gaps. The embedded "
        "store keeps them in `journal(first_no, n, ts_us, records, format, day, kinds)` rows "
        "(PostgreSQL the same): `records` holds `n` packed records numbered from `first_no`, "
        "all of one `format` and decided on one China calendar day `day` (days since "
        "2000-01-01); `kinds` has bit k set when a record of kind value k is in the row; "
        "`(day, kinds)` is indexed, so clearing reads a date's rows only. A record is "
        "an after-image: applying the committed records in order to a checkpoint gives exactly "
        "the committed state (`core/ledger.pyx`; batch totals for settlement are the one "
        "running sum).", "",
        f"Every record starts with the {HEAD_BYTES}-byte head; the fields of its kind's layout "
        f"follow at natural alignment. Unused bytes are zero. `NONE` is `{NONE:#x}`. Read "
        "records with `onecard.protocols.journal_codec` (numpy views per layout, or typed "
        "values), never by offset.", "", "## Head", ""]
    lines += _md_table(place(HEAD))
    for layout, fields in LAYOUTS.items():
        if not fields:
            continue
        lines += ["", f"## Layout `{layout}`: {_kinds_of(layout)}", ""]
        lines += _md_table(place(fields, HEAD_BYTES))
    lines += ["", "## Kinds", "", "| value | kind | layout | meaning |", "|---:|---|---|---|"]
    lines += [f"| {k.value} | `{k.name}` | {k.layout or 'not journaled'} | {k.doc} |"
              for k in KINDS]
    lines += ["", "## Flags", "", "| bit | flag | meaning |", "|---|---|---|"]
    lines += [f"| `{bit:#04x}` | `{name}` | {doc} |" for name, bit, doc in FLAGS]
    lines += ["", "## Card administration actions", "", "| value | action | meaning |",
              "|---:|---|---|"]
    lines += [f"| {v} | `{name}` | {doc} |" for name, v, doc in CARD_ADMIN_ACTIONS]
    lines += ["", "## Versions", "",
              "- **2**: this table. A head common to all kinds, then named, typed fields per "
              "layout. `SETTLE` keeps its debit total in `debit_fen` and moves no money "
              "(`amount_fen` 0).",
              "- **1** (until commit 05052ed): the same head fields at other offsets and six "
              "untyped fields `a`, `b`, `d` (u64) and `c`, `e`, `f` (u32), several values packed "
              "into one. The *version 1* column says where each value was: `b:0:48` is bits "
              "0-47 of `b`, `a+b` the 16 bytes of `a` then `b`. Version-1 rows are read through "
              "`journal_codec.upgrade`; nothing rewrites them.", ""]
    return "\n".join(lines)


# Each derived file is either built or committed, never both: the core's structs are built
# (setup.py writes them before Cython reads them; not in git), the documentation is committed
# (read where the repository is browsed) and a test fails when it is stale.
BUILT = ("core/records.pxd", "core/records.pyx")
COMMITTED = ("protocols/JOURNAL.md",)


def outputs(root: Path) -> dict[Path, str]:
    return {root / "core" / "records.pxd": render_pxd(),
            root / "core" / "records.pyx": render_pyx(),
            root / "protocols" / "JOURNAL.md": render_md()}


def stale(root: Path, which: tuple[str, ...] = BUILT + COMMITTED) -> list[Path]:
    """Derived files (of ``which``) that differ from what the table gives."""
    wanted = {root / name for name in which}
    return [p for p, text in outputs(root).items()
            if p in wanted and (not p.exists() or p.read_text(encoding="utf-8") != text)]


def write(root: Path, which: tuple[str, ...] = BUILT) -> list[Path]:
    """Write the derived files (of ``which``: the build's by default) that changed (an
    unchanged file keeps its mtime, so the build does not recompile the core for nothing);
    the paths written."""
    changed = stale(root, which)
    for path in changed:
        path.write_text(outputs(root)[path], encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    # By hand: the committed documentation too (the build writes only its own files).
    paths = stale(args.root) if args.check else write(args.root, BUILT + COMMITTED)
    for path in paths:
        print(f"{'stale' if args.check else 'wrote'}: {path}")
    return 1 if args.check and paths else 0


if __name__ == "__main__":
    sys.exit(main())
