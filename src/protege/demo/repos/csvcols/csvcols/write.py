"""Writing a Table back to CSV text."""

import csv
import io

from csvcols.table import Table


def write_table(table: Table, delimiter: str = ",") -> str:
    """CSV text with '\\n' line endings; fields are quoted only when needed."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(table.header)
    writer.writerows(table.rows)
    return out.getvalue()
