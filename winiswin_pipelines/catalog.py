"""What the Dagster catalog shows of a table asset: its column schema (from the SQLAlchemy model),
its table, owner and tags, so a person finds in the UI what an asset holds and who looks after it."""

from __future__ import annotations

import dagster as dg
from sqlalchemy.dialects import postgresql

from winiswin_pipelines.db.models import Base

OWNER = "team:winiswin-data"


def column_schema(table: str) -> dg.TableSchema:
    """The columns of `table` as the schema in PostgreSQL declares them."""
    dialect = postgresql.dialect()
    return dg.TableSchema(columns=[
        dg.TableColumn(column.name, column.type.compile(dialect=dialect).lower(),
                       constraints=dg.TableColumnConstraints(nullable=bool(column.nullable),
                                                             other=["primary key"] if column.primary_key else []))
        for column in Base.metadata.tables[table].columns
    ])


def table_asset(table: str, *, tier: str = "hot") -> dict:
    """Keyword arguments of `@dg.asset` / `dg.AssetSpec` for an asset held in `table`."""
    return {
        "owners": [OWNER],
        "tags": {"table": table, "tier": tier},
        "metadata": {"dagster/column_schema": column_schema(table), "dagster/table_name": f"public.{table}"},
    }
