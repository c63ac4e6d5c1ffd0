"""Wire formats of onecard: field tables, schemas and the response-code set.

Everything here is data (or a thin view of data) shared by the compiled core, the switch, the
load generator and the tests, so that a protocol is defined in exactly one place.
"""
