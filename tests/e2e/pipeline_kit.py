"""The pipeline under test, as the end-to-end tests drive and inspect it."""
import uuid
from dataclasses import dataclass
from typing import Any

from totes_local import stack
from totes_local.runner import LocalPipeline


@dataclass
class PipelineUnderTest:
    """A seeded source, an empty warehouse, the buckets, and the handlers wired as AWS would."""

    source: Any
    warehouse: str
    env: dict
    postgres: stack.Postgres
    pipeline: LocalPipeline

    def source_rows(self, sql: str, **params: Any) -> list[list[Any]]:
        """Run a query on the source database."""
        conn = self.source.connect()
        try:
            return conn.run(sql, **params)
        finally:
            conn.close()

    def change_sales_order(self, order_id: int, units: int) -> None:
        """Give a sales order another version at the source: new ``units_sold``, stamped now."""
        self.source_rows("UPDATE sales_order SET units_sold = :u, last_updated = now() "
                         "WHERE sales_order_id = :o", u=units, o=order_id)

    def warehouse_rows(self, sql: str, **params: Any) -> list[list[Any]]:
        """Run a query on the warehouse."""
        conn = self.postgres.connect(self.warehouse)
        try:
            return conn.run(sql, **params)
        finally:
            conn.close()


def encoded_database(postgres: stack.Postgres, encoding: str) -> str:
    """Create an empty database in ``encoding`` (a legacy server's: WIN1252, SQL_ASCII); its name.

    ``encoding`` is one of the tests' constants, checked against the server's list.
    """
    name = f"totesys_{encoding.lower()}_{uuid.uuid4().hex[:8]}"
    admin = postgres.connect("postgres")
    try:
        [[known]] = admin.run("SELECT pg_char_to_encoding(:e) >= 0", e=encoding)
        assert known, encoding
        admin.run(f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' "
                  "TEMPLATE template0")
    finally:
        admin.close()
    return name
