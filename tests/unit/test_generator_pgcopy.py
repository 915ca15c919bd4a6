from datetime import datetime

from totes_local import pgcopy


def test_field_escapes_copy_specials_and_null():
    assert pgcopy.field(None) == "\\N"
    assert pgcopy.field("a\tb\nc\\d\re") == "a\\tb\\nc\\\\d\\re"
    assert pgcopy.field("O'Keefe") == "O'Keefe"
    assert pgcopy.field(3) == "3"


def test_rows_block_is_one_line_per_row():
    block = pgcopy.rows_block([(1, "x", None), (2, "y\tz", datetime(2024, 1, 2, 3, 4, 5))])
    assert block == "1\tx\t\\N\n2\ty\\tz\t2024-01-02 03:04:05\n"


def test_columns_block_transposes_columns_into_rows():
    assert pgcopy.columns_block([["1", "2"], ["a", "b"]]) == "1\ta\n2\tb\n"
    assert pgcopy.columns_block([[], []]) == ""
    assert pgcopy.columns_block([]) == ""
