import pyarrow as pa

from totes import warehouse_schema as ws

CONTRACT_COLUMNS = {
    "fact_sales_order": "sales_record_id sales_order_id created_date created_time "
    "last_updated_date last_updated_time sales_staff_id counterparty_id units_sold unit_price "
    "currency_id design_id "
    "agreed_payment_date agreed_delivery_date agreed_delivery_location_id is_deleted",
    "fact_purchase_orders": "purchase_record_id purchase_order_id created_date created_time "
    "last_updated_date last_updated_time staff_id counterparty_id item_code item_quantity "
    "item_unit_price currency_id agreed_delivery_date agreed_payment_date "
    "agreed_delivery_location_id is_deleted",
    "fact_payment": "payment_record_id payment_id created_date created_time last_updated_date "
    "last_updated_time transaction_id counterparty_id payment_amount currency_id payment_type_id "
    "paid payment_date is_deleted",
    "dim_date": "date_id year month day day_of_week day_name month_name quarter",
    "dim_staff": "staff_id first_name last_name department_name location email_address",
    "dim_location": "location_id address_line_1 address_line_2 district city postal_code country "
    "phone",
    "dim_currency": "currency_id currency_code currency_name",
    "dim_design": "design_id design_name file_location file_name",
    "dim_counterparty": "counterparty_id counterparty_legal_name counterparty_legal_address_line_1 "
    "counterparty_legal_address_line_2 counterparty_legal_district counterparty_legal_city "
    "counterparty_legal_postal_code counterparty_legal_country counterparty_legal_phone_number",
    "dim_payment_type": "payment_type_id payment_type_name",
    "dim_transaction": "transaction_id transaction_type sales_order_id purchase_order_id",
}


def test_tables_and_columns_are_exactly_the_contract():
    assert {name: " ".join(t.column_names) for name, t in ws.TABLES.items()} == CONTRACT_COLUMNS


def test_dimensions_come_before_facts_so_foreign_keys_can_be_satisfied():
    kinds = [table.kind for table in ws.TABLES.values()]
    assert kinds == sorted(kinds, key=lambda kind: kind != "dimension")


def test_every_reference_points_at_a_dimension_primary_key():
    for table in ws.TABLES.values():
        for column in table.columns:
            if column.references:
                assert ws.TABLES[column.references].kind == "dimension"


def test_fact_dates_reference_dim_date():
    for fact in ws.FACTS:
        dated = [c.name for c in fact.columns if c.type == "date"]
        assert dated and all(fact.column(name).references == "dim_date" for name in dated)


def test_arrow_schema_keeps_money_exact_and_times_in_milliseconds():
    schema = ws.arrow_schema(ws.TABLES["fact_sales_order"])
    assert "sales_record_id" not in schema.names
    assert schema.field("unit_price").type == pa.decimal128(10, 2)
    assert schema.field("created_time").type == pa.time32("ms")
    assert schema.field("created_date").type == pa.date32()
    assert not schema.field("units_sold").nullable


def test_nullability_follows_the_source():
    location = ws.arrow_schema(ws.TABLES["dim_location"])
    assert location.field("address_line_2").nullable and location.field("district").nullable
    assert not location.field("city").nullable
    transaction = ws.arrow_schema(ws.TABLES["dim_transaction"])
    assert transaction.field("sales_order_id").nullable


def test_fact_ddl_has_unique_version_key_and_foreign_keys():
    ddl = ws.create_table_sql(ws.TABLES["fact_payment"])
    assert ddl.startswith('CREATE TABLE IF NOT EXISTS "fact_payment"')
    assert 'UNIQUE ("payment_id", "last_updated_date", "last_updated_time")' in ddl
    assert '"payment_record_id" serial NOT NULL PRIMARY KEY' in ddl
    assert 'REFERENCES "dim_transaction" ("transaction_id")' in ddl
    assert 'REFERENCES "dim_date" ("date_id")' in ddl


def test_current_view_keeps_the_last_loaded_version_per_business_id_unless_deleted():
    sql = ws.create_view_sql(ws.TABLES["fact_sales_order"])
    assert 'VIEW "fact_sales_order_current"' in sql
    assert 'DISTINCT ON ("sales_order_id")' in sql
    assert 'ORDER BY "sales_order_id", "sales_record_id" DESC' in sql
    assert "last_updated_date\" DESC" not in sql
    assert sql.endswith('WHERE NOT latest."is_deleted"')


def test_each_fact_has_an_index_finding_the_latest_version_of_an_id():
    assert ws.create_index_sql(ws.TABLES["fact_payment"]) == (
        'CREATE INDEX IF NOT EXISTS "fact_payment_latest" ON "fact_payment" '
        '("payment_id", "payment_record_id" DESC)')
    statements = ws.schema_sql()
    for fact in ws.FACTS:
        assert statements.index(ws.create_index_sql(fact)) < statements.index(
            ws.create_view_sql(fact))


def test_is_deleted_is_every_fact_s_last_column_false_by_default():
    for fact in ws.FACTS:
        column = fact.columns[-1]
        assert (column.name, column.type, column.nullable, column.default) == (
            "is_deleted", "bool", False, False)
        assert ws.add_columns_sql(fact)[-1] == (
            f'ALTER TABLE "{fact.name}" ADD COLUMN IF NOT EXISTS '
            '"is_deleted" boolean DEFAULT false NOT NULL')
        assert ws.arrow_schema(fact).field("is_deleted").type == pa.bool_()


def test_the_loaded_manifest_gains_the_capture_point_in_place():
    statements = ws.create_bookkeeping_sql()
    assert 'ALTER TABLE "etl"."loaded_manifest" ADD COLUMN IF NOT EXISTS '\
        '"capture_snapshot" text' in statements
    assert 'ALTER TABLE "etl"."loaded_manifest" ADD COLUMN IF NOT EXISTS '\
        '"database_time" timestamp(3)' in statements


def test_every_logical_type_is_spelled_once_for_every_system_and_each_spelling_builds():
    """One row per type (LOGICAL_TYPES) gives the DDL, the catalog, Arrow and the lake's Iceberg."""
    import pytest
    from pyiceberg import types

    from totes.warehouse_schema import (CATALOG_TYPES, LOGICAL_TYPES, SQL_TYPES, Column,
                                        arrow_type, made_by)

    used = {column.type for table in ws.TABLES.values() for column in table.columns}
    assert used <= set(LOGICAL_TYPES) == set(SQL_TYPES) == set(CATALOG_TYPES)
    for name, kind in LOGICAL_TYPES.items():
        assert isinstance(made_by(types, kind.iceberg), types.PrimitiveType), name
        if kind.arrow is None:
            with pytest.raises(ValueError, match="never in Parquet"):
                arrow_type(Column("id", name))
        else:
            assert arrow_type(Column("x", name)) == made_by(pa, kind.arrow), name
    assert arrow_type(Column("x", "money")) == pa.decimal128(10, 2)
