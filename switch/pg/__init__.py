"""The PostgreSQL store (issue 14), phase 1: its schema and migrations (``schema``,
``migrate``), moving an embedded SQLite data set into it (``importer``), connecting with
one-line errors (``connect``) and the ``onecard db`` command (``cli``). The switch still serves
from SQLite; docs/postgresql.md says what works and what comes next."""
