import pytest

from iniconf.config import Config

TEXT = """
retries = 3

[server]
port = 8080
debug = yes

[client]
debug = off
"""


def test_sections_in_order():
    assert Config.from_string(TEXT).sections() == ["server", "client"]


def test_getint_and_default_section():
    cfg = Config.from_string(TEXT)
    assert cfg.getint("server", "port") == 8080
    assert cfg.getint("client", "retries") == 3


def test_getbool():
    cfg = Config.from_string(TEXT)
    assert cfg.getbool("server", "debug") is True
    assert cfg.getbool("client", "debug") is False


def test_fallback_for_missing_key():
    assert Config.from_string(TEXT).get("client", "timeout", fallback="30") == "30"


def test_getbool_rejects_other_words():
    with pytest.raises(ValueError, match="not a boolean"):
        Config.from_string("[a]\nflag = maybe\n").getbool("a", "flag")
