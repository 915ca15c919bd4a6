import re
from urllib.parse import quote

from totes_local import cli


def _dsn(postgres, name):
    socket_dir = quote(postgres.socket_dir, safe="")
    return f"postgresql://{postgres.user}@{socket_dir}:{postgres.port}/{name}"


def test_seed_then_simulate_through_a_dsn(postgres, database, capsys):
    name = database("cliseed")
    target = _dsn(postgres, name)
    assert cli.main(["seed", "--dsn", target, "--scale", "0.02", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "seeded totesys" in out and "sales_order" in out and "rows/s" in out
    conn = postgres.connect(name)
    try:
        orders = conn.run("SELECT count(*) FROM sales_order")[0][0]
    finally:
        conn.close()
    assert re.search(rf"^  sales_order +{orders:,}$", out, re.MULTILINE)
    assert cli.main(["simulate", "--dsn", target, "--steps", "6", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "simulated 6 steps" in out and "sales_orders_created" in out


def test_seeding_a_database_that_holds_data_is_one_line_and_status_2(
        postgres, totesys, capsys):
    assert cli.main(["seed", "--dsn", _dsn(postgres, totesys.name), "--scale", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("totes seed: error: totesys already holds data")
    assert err.count("\n") == 1


def test_recreate_replaces_an_existing_database(postgres, totesys, capsys):
    target = _dsn(postgres, totesys.name)
    assert cli.main(["seed", "--dsn", target, "--scale", "0.01", "--recreate"]) == 0
    conn = totesys.connect()
    try:
        assert conn.run("SELECT count(*) FROM sales_order")[0][0] < totesys.counts["sales_order"]
    finally:
        conn.close()


def test_unreachable_server_is_one_line_and_status_2(tmp_path, capsys):
    target = f"postgresql://etl:hunter2@{quote(str(tmp_path), safe='')}:5999/totesys"
    assert cli.main(["simulate", "--dsn", target]) == 2
    err = capsys.readouterr().err
    assert err.startswith("totes simulate: error: cannot connect to database totesys")
    assert "hunter2" not in err and err.count("\n") == 1


def test_simulating_an_unseeded_database_says_to_seed_first(postgres, database, capsys):
    assert cli.main(["simulate", "--dsn", _dsn(postgres, database("cliempty"))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "totes simulate: error:" in err


def test_embedded_server_is_the_default_target(postgres, capsys):
    where = ["--data-dir", postgres.socket_dir]
    assert cli.main(["seed", "--scale", "0.01", *where]) == 0
    assert cli.main(["simulate", "--steps", "2", *where]) == 0
    out = capsys.readouterr().out
    assert out.count(f"embedded server in {postgres.socket_dir}") == 2
