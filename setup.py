"""Build the compiled core.

Extensions are declared here (pyproject.toml holds the metadata). Set ONECARD_ANNOTATE=1 to
write Cython's HTML annotation next to each .pyx (yellow lines = Python interaction), and
ONECARD_DEBUG=1 to build with -O0 -g and bounds checks on.
"""

import os
import sys
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

ANNOTATE = os.environ.get("ONECARD_ANNOTATE") == "1"
DEBUG = os.environ.get("ONECARD_DEBUG") == "1"


def _check_headers() -> None:
    # MACs link libcrypto (DES, SM4), the group committer links SQLite: fail early with the fix.
    roots = ("/usr/include", "/usr/local/include", os.environ.get("ONECARD_INCLUDE", ""))
    for header, package in (("openssl/des.h", "libssl-dev"), ("sqlite3.h", "libsqlite3-dev")):
        if not any(root and Path(root, header).exists() for root in roots):
            sys.stderr.write(f"onecard: {header} not found. Install it first: "
                             f"apt-get install {package}  (or set ONECARD_INCLUDE)\n")
            raise SystemExit(1)


_check_headers()

CFLAGS = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-strict-aliasing"]
CFLAGS += ["-Wno-deprecated-declarations", "-Wno-unused-function"]
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "nonecheck": False,
    "embedsignature": True,
}

MODULES = {
    "codes": [],
    "commit": ["sqlite3"],
    "crypto": ["crypto"],
    "bitslice": [],
    "isocodec": [],
    "mpack": [],
    "maps": [],
    "horizon": [],
    "holders": ["crypto"],
    "state": [],
    "records": [],
    "journal": [],
    "ledger": [],
    "metrics": [],
    "authorise": [],
    "payments": [],
    "transit": [],
    "services": [],
    "decide": [],
    "forward": [],
    "operations": [],
    "iso_path": [],
    "native_msg": [],
    "native_path": [],
    "engine": [],
    "intake": [],
    "terminal": [],
}


def _cython_include() -> str:
    """Cython resolves ``cimport onecard.core.x`` through directories named like the package,
    while the sources live in core/ (the layout shows the architecture). Point a staging
    directory's onecard/core at core/ so both hold."""
    root = Path(__file__).resolve().parent
    staging = root / "build" / "cython-include"
    package = staging / "onecard"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.pxd").touch()
    for name in ("core", "protocols"):
        link = package / name
        if not link.is_symlink():
            link.symlink_to(root / name, target_is_directory=True)
    return str(staging)


def _render_journal(staging: str) -> None:
    """The core's journal structs come from the table in protocols/journal.py: write them
    before Cython reads them (they are built, not committed; the format's documentation is
    committed, and rendered by hand: python -m onecard.protocols.journal_render)."""
    sys.path.insert(0, staging)
    from onecard.protocols import journal_render

    for path in journal_render.write(Path(__file__).resolve().parent):
        print(f"onecard: {path.name} written from protocols/journal.py")


def extension(name: str, libs: list[str]) -> Extension:
    return Extension(
        f"onecard.core.{name}",
        [f"core/{name}.pyx"],
        include_dirs=[numpy.get_include(), "core"],
        depends=[str(h) for h in sorted(Path("core").glob("*.h"))],   # rebuild when they change
        libraries=libs,
        extra_compile_args=CFLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


STAGING = _cython_include()
_render_journal(STAGING)

setup(
    ext_modules=cythonize(
        [extension(name, libs) for name, libs in MODULES.items()],
        compiler_directives=DIRECTIVES,
        annotate=ANNOTATE,
        include_path=[STAGING],
    ),
)
