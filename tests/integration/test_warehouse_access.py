"""A warehouse login missing a grant of the docs is an input error naming what to run.

A first deploy whose ``totes_load`` may not create the star schema, or the temporary
tables load stages each batch in, must say so as an input error (a person must act;
the ``InputErrors`` alarm) pointing at docs/deploy.md's statements, not as an
unclassified database error read as a bug.
"""
import uuid
from typing import Iterator

import pg8000.native
import pytest

from totes import db, errors, warehouse
from totes.warehouse_schema import DIMENSIONS


@pytest.fixture
def login(postgres, database) -> Iterator[tuple[str, str]]:
    """A fresh warehouse database and a login that may only connect to it."""
    name, role = database("warehouse"), f"totes_load_{uuid.uuid4().hex[:8]}"
    admin = postgres.connect(name)
    try:
        admin.run(f"CREATE ROLE {role} LOGIN")
        admin.run(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC")
        admin.run("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        admin.run(f"GRANT CONNECT ON DATABASE {name} TO {role}")
        yield name, role
    finally:
        admin.run(f"DROP OWNED BY {role}")
        admin.run(f"DROP ROLE {role}")
        admin.close()


def connect_as(postgres, name: str, role: str) -> pg8000.native.Connection:
    """Connect to the warehouse database as ``role``."""
    return db.connect_with({**postgres.secret(name), "username": role}, "test")


def test_a_login_that_may_not_create_the_schema_is_an_input_error_naming_the_grants(
        postgres, login):
    name, role = login
    conn = connect_as(postgres, name, role)
    try:
        with pytest.raises(warehouse.WarehouseAccessError,
                           match="may not create the star schema") as raised:
            warehouse.ensure_schema(conn)
    finally:
        conn.close()
    assert errors.kind_of(raised.value) == errors.INPUT
    assert "(docs/deploy.md, \"The warehouse database and its login\")" in str(raised.value)


def test_a_login_that_may_not_create_temporary_tables_is_an_input_error(postgres, login):
    name, role = login
    admin = postgres.connect(name)
    try:
        admin.run(f"GRANT CREATE ON DATABASE {name} TO {role}")
        admin.run(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")
    finally:
        admin.close()
    conn = connect_as(postgres, name, role)
    try:
        warehouse.ensure_schema(conn)   # CREATE is granted: the schema is made
        conn.run("START TRANSACTION")
        with pytest.raises(warehouse.WarehouseAccessError,
                           match="may not create temporary tables") as raised:
            warehouse.create_staging(conn, DIMENSIONS[0])
    finally:
        conn.close()
    assert errors.kind_of(raised.value) == errors.INPUT
