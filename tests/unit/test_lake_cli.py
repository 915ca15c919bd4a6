"""``totes lake``: DuckDB over the lake tables the demo read back through pyiceberg."""
import argparse
import io

import pyarrow.parquet as pq
import pytest

from totes.lake_schema import LAKE_TABLES, arrow_schema
from totes_local import cli, lake_cli


@pytest.fixture
def demo_dir(tmp_path):
    folder = tmp_path / lake_cli.LAKE_FOLDER
    folder.mkdir()
    for name, table in LAKE_TABLES.items():
        pq.write_table(arrow_schema(table).empty_table(), folder / f"{name}.parquet")
    return tmp_path


def test_statements_run_until_end_of_input_and_errors_do_not_end_the_prompt(demo_dir):
    out = io.StringIO()
    script = io.StringIO("SELECT count(*) AS orders\nFROM fact_sales_order_current;\n"
                         "SELEC nonsense;\nSELECT 41 + 1 AS answer;\n")
    assert lake_cli.run(argparse.Namespace(dir=demo_dir, command=None), script, out) == 0
    printed = out.getvalue()
    assert "orders" in printed and "error:" in printed and "42" in printed


def test_without_a_demo_it_says_what_to_do(tmp_path, capsys):
    assert cli.main(["lake", "--dir", str(tmp_path), "-c", "SELECT 1"]) == cli.USAGE_ERROR
    assert "run `make demo` first" in capsys.readouterr().err
