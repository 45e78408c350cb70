"""Migration of the legacy bot's trade stores (JSONL, JSON, SQLite, CSV) into PostgreSQL.

Pure modules (no Dagster, no database): `records` (what flows through), `sniff` (which store a file
really is), `readers` (raw records with their position), `variants` (which record shape a JSON
record has), `normalize` (raw record -> `trades` / `trade_partial_exits` row, or a rejection with
its reason), `pipeline` (reader + pairing + normaliser for one store) and `accounting`.
`load` writes through the project's bulk upsert and verifies the result against PostgreSQL.
"""
