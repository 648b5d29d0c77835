from csvcols.select import select, sort_by, where
from csvcols.table import read_table

TABLE = read_table("name,age,city\nAnn,31,Oslo\nBob,27,Rome\nCid,4,Oslo\n")


def test_select_reorders_columns():
    picked = select(TABLE, ["city", "name"])
    assert picked.header == ["city", "name"]
    assert picked.rows[0] == ["Oslo", "Ann"]


def test_where():
    assert where(TABLE, "city", lambda c: c == "Oslo").column("name") == ["Ann", "Cid"]


def test_sort_numeric():
    assert sort_by(TABLE, "age", numeric=True).column("name") == ["Cid", "Bob", "Ann"]
