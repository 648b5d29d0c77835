"""Reading CSV text into a header and rows."""

import csv
import io
from dataclasses import dataclass


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def index_of(self, name: str) -> int:
        try:
            return self.header.index(name)
        except ValueError:
            raise KeyError(f"no column {name!r}; columns are {', '.join(self.header)}") from None

    def column(self, name: str) -> list[str]:
        index = self.index_of(name)
        return [row[index] for row in self.rows]


def read_table(text: str, delimiter: str = ",") -> Table:
    """Parse CSV `text` whose first row is the header; header names lose surrounding spaces.

    Every row must have as many fields as the header.
    """
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise ValueError("empty CSV: no header row") from None
    rows = []
    for row in reader:
        if len(row) != len(header):
            raise ValueError(f"line {reader.line_num}: expected {len(header)} fields, got {len(row)}")
        rows.append(row)
    return Table(header, rows)
