"""The gateway's state in force: one SQLite file under ``--state`` (grants, ledger, audit, tokens, exports)."""
