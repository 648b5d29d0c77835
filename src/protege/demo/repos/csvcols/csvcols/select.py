"""Column selection, row filtering and sorting; every function returns a new Table."""

from collections.abc import Callable

from csvcols.table import Table


def select(table: Table, names: list[str]) -> Table:
    """Only the columns `names`, in that order."""
    indexes = [table.index_of(name) for name in names]
    return Table(list(names), [[row[i] for i in indexes] for row in table.rows])


def where(table: Table, name: str, predicate: Callable[[str], bool]) -> Table:
    """The rows whose value in column `name` satisfies `predicate`."""
    index = table.index_of(name)
    return Table(list(table.header), [row for row in table.rows if predicate(row[index])])


def sort_by(table: Table, name: str, *, numeric: bool = False, reverse: bool = False) -> Table:
    """Rows sorted by column `name` (as numbers when `numeric`); the sort is stable."""
    index = table.index_of(name)

    def key(row: list[str]) -> float | str:
        return float(row[index]) if numeric else row[index]

    return Table(list(table.header), sorted(table.rows, key=key, reverse=reverse))
