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
    assert lake_cli.run(argparse.Namespace(dir=demo_dir, sql=None), script, out) == 0
    printed = out.getvalue()
    assert "orders" in printed and "error:" in printed and "42" in printed


@pytest.mark.parametrize("command", [["-c", "SELECT 1"], []], ids=["-c", "prompt"])
def test_without_a_demo_it_says_what_to_do(tmp_path, capsys, command):
    assert cli.main(["lake", "--dir", str(tmp_path), *command]) == cli.USAGE_ERROR
    err = capsys.readouterr().err
    # The line names the subcommand, not -c's SQL ("totes SELECT 1: error") or None.
    assert err.startswith("totes lake: error: no lake in ") and "run `make demo` first" in err


def test_one_statement_prints_its_result(demo_dir, capsys):
    assert cli.main(["lake", "--dir", str(demo_dir), "-c", "SELECT 41 + 1 AS answer"]) == 0
    assert "42" in capsys.readouterr().out


@pytest.mark.parametrize("sql", ["SELECT * FROM no_such_table", "SELEC nonsense",
                                 "SELECT * FROM fact_sales_order WHERE sales_order_id = ?"])
def test_a_failing_statement_is_one_line_and_status_2_not_a_traceback(demo_dir, capsys, sql):
    assert cli.main(["lake", "--dir", str(demo_dir), "-c", sql]) == cli.USAGE_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("totes lake: error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
