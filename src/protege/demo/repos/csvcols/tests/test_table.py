import pytest

from csvcols.table import read_table


def test_header_and_rows():
    table = read_table("name,age\nAnn,31\nBob,27\n")
    assert table.header == ["name", "age"]
    assert table.rows == [["Ann", "31"], ["Bob", "27"]]


def test_quoted_field_with_delimiter():
    assert read_table('name,city\n"Doe, Jane","Paris"\n').rows == [["Doe, Jane", "Paris"]]


def test_header_names_are_stripped():
    assert read_table("name, age\nAnn,31\n").header == ["name", "age"]


def test_row_with_wrong_field_count_is_an_error():
    with pytest.raises(ValueError, match="line 3: expected 2 fields, got 3"):
        read_table("a,b\n1,2\n1,2,3\n")


def test_empty_text_is_an_error():
    with pytest.raises(ValueError, match="no header"):
        read_table("")


def test_unknown_column_names_the_columns():
    with pytest.raises(KeyError, match="columns are a, b"):
        read_table("a,b\n1,2\n").column("c")
