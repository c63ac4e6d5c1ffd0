"""Constant-time check of the compiled DES code (issue 30), deterministic: the ctgrind trick.

A small C program runs the X9.19 MACs of a batch from the same headers the core compiles
(des_lanes.h, des_bitslice.h) with the keys and the messages marked *undefined* for
valgrind's memcheck (VALGRIND_MAKE_MEM_UNDEFINED). Memcheck follows undefinedness through
every computation and reports a conditional jump or a memory address that depends on it:
exactly a secret-dependent branch or a secret-indexed load. The constant-time paths must run
without a single report; the table-based path (SP-table loads indexed by key ^ data) must be
caught, which shows the check sees what it is for.

Not covered: the VBMI path (des_vbmi.h), since valgrind runs no AVX-512. Its code has no
branch and no load that a key or data bit reaches (its S-box tables are registers, read by
VPERMB), which this test cannot show. No timing is measured anywhere.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "core"
MEMCHECK_H = Path("/usr/include/valgrind/memcheck.h")

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <valgrind/memcheck.h>
#include "des_lanes.h"
#include "des_bitslice.h"

enum { COUNT = 70, BYTES = 150 };

int main(int argc, char** argv) {
    static uint8_t keys[COUNT][16], data[COUNT][BYTES], out[COUNT][8];
    static OcDesKey k1[COUNT], k2[COUNT], tmp;
    static OcMacJob table[COUNT];
    static OcBsJob bs[COUNT];
    uint64_t s = 30;
    oc_des_init();
    oc_bs_init();
    for (int i = 0; i < COUNT; i++) {
        for (int j = 0; j < 16; j++)
            keys[i][j] = (uint8_t)((s = s * 6364136223846793005ull + 1) >> 56);
        for (int j = 0; j < BYTES; j++)
            data[i][j] = (uint8_t)((s = s * 6364136223846793005ull + 1) >> 56);
    }
    /* the secrets (and the messages) from here on: undefined for memcheck */
    VALGRIND_MAKE_MEM_UNDEFINED(keys, sizeof keys);
    VALGRIND_MAKE_MEM_UNDEFINED(data, sizeof data);
    for (int i = 0; i < COUNT; i++) {
        size_t n = (size_t)(i * 37 % BYTES);          /* lengths are public */
        if (strcmp(argv[1], "table") == 0) {
            oc_des_key(keys[i], &k1[i], NULL);
            oc_des_key(keys[i] + 8, &tmp, &k2[i]);
            table[i] = (OcMacJob){&k1[i], &k2[i], data[i], n, out[i]};
        }
        bs[i] = (OcBsJob){keys[i], 16, data[i], n, out[i]};
    }
    if (strcmp(argv[1], "table") == 0)
        oc_x919_many(table, COUNT);
    else
        oc_bs_x919_many(bs, COUNT, atoi(argv[1]), atoi(argv[1]));
    /* the MACs must come out undefined: else the secrets never reached them and nothing
       was checked (the table path's do not: memcheck reports a load at an undefined
       address, then takes the loaded value as defined) */
    static uint8_t vbits[sizeof out];
    if (strcmp(argv[1], "table") == 0)
        return 0;
    if (VALGRIND_GET_VBITS(out, vbits, sizeof out) != 1)
        return 3;
    for (size_t i = 0; i < sizeof out; i++)
        if (vbits[i] != 0xff)
            return 4;
    (void)argc;
    return 0;
}
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    if shutil.which("valgrind") is None or shutil.which("gcc") is None:
        pytest.skip("needs valgrind and gcc (.ci/run installs valgrind)")
    if not MEMCHECK_H.exists():
        pytest.skip("needs valgrind's memcheck.h")
    d = tmp_path_factory.mktemp("ct")
    (d / "ct.c").write_text(PROGRAM)
    subprocess.run(["gcc", "-O3", "-fno-strict-aliasing", "-I", str(CORE), "-o", str(d / "ct"),
                    str(d / "ct.c")], check=True, capture_output=True, text=True)
    return d / "ct"


def memcheck_errors(program: Path, path: str) -> tuple[int, str]:
    out = subprocess.run(["valgrind", "--tool=memcheck", "--error-exitcode=0",
                          str(program), path], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    found = re.search(r"ERROR SUMMARY: (\d+) errors", out.stderr)
    assert found, out.stderr
    return int(found.group(1)), out.stderr


@pytest.mark.parametrize("path", ["64", "256"], ids=["portable", "avx2"])
def test_the_bitsliced_paths_have_no_secret_dependent_branch_or_load(program, path):
    errors, report = memcheck_errors(program, path)
    assert errors == 0, report[-4000:]


def test_the_check_catches_the_table_path(program):
    errors, report = memcheck_errors(program, "table")
    assert errors > 0
    assert "uninitialised value" in report
