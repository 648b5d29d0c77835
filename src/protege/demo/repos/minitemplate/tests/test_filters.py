from minitemplate.filters import FILTERS


def test_length():
    assert FILTERS["length"]([1, 2, 3]) == 3


def test_case_filters():
    assert (FILTERS["upper"]("a"), FILTERS["lower"]("B"), FILTERS["title"]("c d")) == ("A", "b", "C D")
