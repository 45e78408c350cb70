"""winiswin_pipelines: the data platform and live-trading loop of winiswin, as a Dagster project.

Layers, each importing only the ones below it (checked by `lint-imports`):
  demo, dev                 what `make run` and `make dev` do
  definitions, defs/        the Dagster layer: thin definitions, one module per area
  resources, instance_storage   Dagster resources (configuration) and Dagster's own storage
  trading, legacy, features, archive, technical, labels, marketdata   logic per area, and its SQL
  factories                 the database manager and the cold store, built from settings
  db, coldstore             PostgreSQL and the cold store
  settings, errors, times   the environment, how errors read, epoch-ms times

Database access, one convention: each area keeps its SQL in one module (`features/repository.py`,
`trading/repository.py`, `marketdata/repository.py`, `archive/repository.py`, `legacy/load.py`, ...).
A function that uses the database takes either a `DatabaseManager`, and then owns its
transactions, or a SQLAlchemy `Connection` (or `AsyncConnection`) inside a transaction that the
caller owns. Never an `Engine`. What an OPEN or a final trade is lives in `db.models.TradeStatus`.
"""
