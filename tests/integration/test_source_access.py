"""A source login missing a grant of the docs is an input error naming what to run.

A first deploy whose ``totes_ingest`` lacks ``SELECT`` on a table, or ``USAGE`` on the
schema (PostgreSQL then reports the table as not existing), must say so as an input
error (a person must act; the ``InputErrors`` alarm), pointing at docs/deploy.md's
statements, not as an unclassified database error.
"""
import uuid
from typing import Any, Iterator

import pytest

from totes import db, errors, extract
from totes.source import SOURCE_TABLES


@pytest.fixture
def login(postgres, totesys) -> Iterator[tuple[str, Any]]:
    """A new login on the source with no grant of its own; its name and an admin connection."""
    role = f"totes_ingest_{uuid.uuid4().hex[:8]}"
    admin = totesys.connect()
    admin.run(f"CREATE ROLE {role} LOGIN")
    try:
        yield role, admin
    finally:
        admin.run(f"DROP OWNED BY {role}")
        admin.run(f"DROP ROLE {role}")
        admin.close()


def lock_as(postgres, totesys, role: str) -> None:
    """Lock the source tables as ``role`` does at the start of a run."""
    conn = db.connect_with({**postgres.secret(totesys.name), "username": role}, "test")
    try:
        conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        extract.lock_tables(conn, SOURCE_TABLES)
    finally:
        conn.close()


def test_a_login_without_select_on_the_tables_is_an_input_error_naming_the_grants(
        postgres, totesys, login):
    role, _ = login
    with pytest.raises(extract.SourceAccessError, match="permission denied for table") as raised:
        lock_as(postgres, totesys, role)
    assert errors.kind_of(raised.value) == errors.INPUT
    assert "docs/deploy.md, \"The totesys login\"" in str(raised.value)
    quoted = ", ".join(map(db.quote_ident, SOURCE_TABLES))
    assert f"GRANT SELECT ON {quoted} TO {db.quote_ident(role)}" in str(raised.value)


def test_a_catalog_the_login_may_not_read_leaves_the_refusal_saying_the_hint_failed(
        postgres, totesys, login):
    role, admin = login
    admin.run("REVOKE SELECT ON pg_catalog.pg_namespace FROM PUBLIC")   # a hardened catalog
    try:
        with pytest.raises(extract.SourceAccessError, match="permission denied for table "
                                                            "address") as raised:
            lock_as(postgres, totesys, role)
    finally:
        admin.run("GRANT SELECT ON pg_catalog.pg_namespace TO PUBLIC")
    assert errors.kind_of(raised.value) == errors.INPUT
    assert ("the catalog could not be asked which grant is missing (DatabaseError: permission "
            "denied for table pg_namespace)") in str(raised.value)
    assert "docs/deploy.md, \"The totesys login\"" in str(raised.value)


def test_a_login_without_usage_on_the_schema_is_an_input_error_not_a_missing_table(
        postgres, totesys, login):
    role, admin = login
    admin.run("REVOKE ALL ON SCHEMA public FROM PUBLIC")
    admin.run(f"GRANT SELECT ON {', '.join(SOURCE_TABLES)} TO {role}")
    with pytest.raises(extract.SourceAccessError, match="does not exist") as raised:
        lock_as(postgres, totesys, role)
    assert errors.kind_of(raised.value) == errors.INPUT
    assert (f'GRANT USAGE ON SCHEMA "public" TO {db.quote_ident(role)} '
            f"(for {', '.join(SOURCE_TABLES)})") in str(raised.value)
    assert "ALTER ROLE" not in str(raised.value)   # public is on the search_path


def test_tables_in_a_schema_off_the_search_path_name_the_schema_and_the_alter_role(
        postgres, totesys, login):
    role, admin = login
    admin.run("CREATE SCHEMA sales")
    for table in SOURCE_TABLES:
        admin.run(f"ALTER TABLE {table} SET SCHEMA sales")
    admin.run(f"GRANT USAGE ON SCHEMA sales TO {role}")
    admin.run(f"GRANT SELECT ON ALL TABLES IN SCHEMA sales TO {role}")
    with pytest.raises(extract.SourceAccessError, match="does not exist") as raised:
        lock_as(postgres, totesys, role)
    fixes = str(raised.value).split("reaches them; ")[1].split("; a DBA")[0]
    assert fixes == (f'ALTER ROLE {db.quote_ident(role)} SET search_path = "sales" (the tables '
                     'are in schema sales, outside the login\'s search_path "$user", public)')


def test_tables_split_over_schemas_are_told_to_move_into_one_not_a_path_that_hides_the_rest(
        postgres, totesys, login):
    role, admin = login
    admin.run("CREATE SCHEMA sales")
    admin.run("ALTER TABLE staff SET SCHEMA sales")
    admin.run(f"GRANT USAGE ON SCHEMA public, sales TO {role}")
    admin.run(f"GRANT SELECT ON ALL TABLES IN SCHEMA public, sales TO {role}")
    with pytest.raises(extract.SourceAccessError, match='relation "staff" does not exist') \
            as raised:
        lock_as(postgres, totesys, role)
    fixes = str(raised.value).split("reaches them; ")[1].split("; a DBA")[0]
    assert fixes.startswith('the 11 tables must be in one schema, the first of the login\'s '
                            'search_path ("$user", public): staff in schema sales: move them')
    assert "SET search_path = \"sales\"" not in fixes   # it would hide the other ten


def test_a_table_in_no_schema_at_all_asks_whether_the_secret_names_the_totesys_database(
        postgres, totesys, login):
    role, admin = login
    admin.run("ALTER TABLE staff RENAME TO staff_renamed")
    admin.run(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    with pytest.raises(extract.SourceAccessError,
                       match="no table staff in any schema of this database: is the secret's "
                             "dbname the totesys database"):
        lock_as(postgres, totesys, role)


def test_the_docs_grants_are_enough_to_lock_every_table(postgres, totesys, login):
    role, admin = login
    admin.run("REVOKE ALL ON SCHEMA public FROM PUBLIC")
    admin.run(f"GRANT USAGE ON SCHEMA public TO {role}")
    admin.run(f"GRANT SELECT ON {', '.join(SOURCE_TABLES)} TO {role}")
    lock_as(postgres, totesys, role)
