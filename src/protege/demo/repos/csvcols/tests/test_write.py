from csvcols.table import read_table
from csvcols.write import write_table


def test_round_trip_quotes_when_needed():
    text = 'name,city\n"Doe, Jane",Paris\n'
    assert write_table(read_table(text)) == text
