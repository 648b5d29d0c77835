import more_itertools
import pytest


@pytest.fixture
def letters():
    return list("abcdefghij")


@pytest.fixture
def chunks():
    """The reference split: more-itertools' own `chunked`."""
    return lambda items, size: [list(chunk) for chunk in more_itertools.chunked(items, size)]
