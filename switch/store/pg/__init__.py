"""The PostgreSQL store (issue 14): its schema and migrations (``schema``, ``migrate``), moving
an embedded SQLite data set into it (``importer``), connecting with one-line errors
(``connect``), the ``onecard db`` command (``cli``); and for starting and running on it, the
checkpoints and sealed files it holds (``checkpoints``), reading its journal (``journal``) and
the ``sqlite3``-style adapter the shared queries run through (``db``). docs/postgresql.md says
what works and what comes next."""
