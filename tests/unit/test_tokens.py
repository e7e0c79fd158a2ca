"""The tokens file: what it accepts, and errors that name the file and the line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdns.api.tokens import TokensError, load

ROOT = Path(__file__).resolve().parents[2]
GOOD = 'name = "a"\nsecret = "0123456789abcdef"\nscope = "write"\n'


def test_the_example_file_loads_and_finds_tokens_by_secret() -> None:
    tokens = load(ROOT / "conf" / "tokens.toml.example")
    assert len(tokens) == 3
    found = tokens.find("change-me-shop-0123456789")
    assert found is not None and found.name == "shop-sidekick"
    assert found.may_write() and found.covers("shop") and not found.covers("default")
    dashboard = tokens.find("change-me-fedcba9876543210")
    assert dashboard is not None and not dashboard.may_write() and dashboard.covers("any")
    assert tokens.find("change-me") is None
    assert tokens.find("") is None


@pytest.mark.parametrize(("text", "message"), [
    ("[[token]]\n" + GOOD + "\n[[token]]\nname = \"b\"\nsecret = \"short\"\nscope = \"read\"\n",
     r"line 6: token 'b' needs a secret of at least 16 characters"),
    ("[[token]]\n" + GOOD.replace("write", "admin"), r"line 1: .*scope must be"),
    ("[[token]]\n" + GOOD + "colour = 1\n", r"line 1: unknown key 'colour'"),
    ("[[token]]\n" + GOOD + "namespaces = []\n", r"line 1: .*non-empty list"),
    ("[[token]]\n" + GOOD + "namespaces = [\"Shop\"]\n", r"line 1: .*DNS-1123"),
    ("[[token]]\n" + GOOD + "[[token]]\n" + GOOD, r"line 5: a second token named 'a'"),
    ("[[token]]\n" + GOOD + "[[token]]\n" + GOOD.replace('"a"', '"b"'),
     r"line 5: token 'b' has the secret of another token"),
    ("[[token]]\nname = \"a\"\nsecret = \n", r"not valid TOML.*line 3"),
    ("", r"no \[\[token\]\] tables"),
    ("tokens = 1\n", r"unknown key 'tokens'"),
])
def test_a_bad_file_names_itself_and_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    with pytest.raises(TokensError, match=rf"^{re.escape(str(path))}:? .*{message}"):
        load(path)


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TokensError, match=r"cannot read .*absent\.toml"):
        load(tmp_path / "absent.toml")
