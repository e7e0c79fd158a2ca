"""Bearer tokens for the HTTP API: who may read, who may write, and in which namespaces.

The tokens file is TOML, one ``[[token]]`` table per token (see conf/tokens.example.toml). Only a
SHA-256 digest of each secret is kept in memory, and a presented token is compared with every
digest in constant time, so neither the timing nor a log line tells a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdns.config import ConfigError, read_toml
from sdns.errors import Invalid
from sdns.validation import label

READ, WRITE = "read", "write"
SCOPES = (READ, WRITE)
MIN_SECRET = 16
KEYS = ("name", "secret", "scope", "namespaces")
_TABLE = re.compile(r"^\s*\[\[\s*token\s*\]\]")


class TokensError(Exception):
    """The tokens file cannot be used; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    digest: bytes
    scope: str
    namespaces: frozenset[str] | None  # None: every namespace

    def may_write(self) -> bool:
        return self.scope == WRITE

    def covers(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Tokens:
    """The tokens of one file, as read."""

    def __init__(self, tokens: Iterable[Token]) -> None:
        self._tokens = tuple(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def find(self, secret: str) -> Token | None:
        digest, found = _digest(secret), None
        for token in self._tokens:  # every one, so the time does not tell which matched
            if hmac.compare_digest(token.digest, digest):
                found = token
        return found


def _token(table: Any) -> Token:
    if not isinstance(table, dict):
        raise ValueError("is not a table")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    name, secret, scope = table.get("name"), table.get("secret"), table.get("scope")
    if not isinstance(name, str) or not name:
        raise ValueError("needs a name")
    if not isinstance(secret, str) or len(secret) < MIN_SECRET:
        raise ValueError(f"token {name!r} needs a secret of at least {MIN_SECRET} characters")
    if scope not in SCOPES:
        raise ValueError(f"token {name!r}: scope must be \"read\" or \"write\", not {scope!r}")
    namespaces = table.get("namespaces")
    if namespaces is not None:
        if not isinstance(namespaces, list) or not namespaces:
            raise ValueError(f"token {name!r}: namespaces must be a non-empty list of names")
        try:
            namespaces = frozenset(label(n, "namespaces") for n in namespaces)
        except Invalid as error:
            raise ValueError(f"token {name!r}: {error.reason}") from None
    return Token(name, _digest(secret), scope, namespaces)


def load(path: Path) -> Tokens:
    """The tokens of ``path``; a TokensError naming the file and line when it cannot be used."""
    try:
        data = read_toml(path)
    except ConfigError as error:
        raise TokensError(str(error)) from None
    text = path.read_text()
    unknown = sorted(set(data) - {"token"})
    if unknown:
        raise TokensError(f"{path}: unknown key {unknown[0]!r}: tokens are [[token]] tables")
    tables = data.get("token", [])
    if not isinstance(tables, list) or not tables:
        raise TokensError(f"{path}: no [[token]] tables: without tokens every call would be "
                          "refused")
    lines = [number for number, line in enumerate(text.splitlines(), 1) if _TABLE.match(line)]
    tokens: list[Token] = []
    for index, table in enumerate(tables):
        where = f"{path}: line {lines[index]}" if index < len(lines) else f"{path}"
        try:
            token = _token(table)
        except ValueError as error:
            raise TokensError(f"{where}: {error}") from None
        if any(t.name == token.name for t in tokens):
            raise TokensError(f"{where}: a second token named {token.name!r}")
        if any(t.digest == token.digest for t in tokens):
            raise TokensError(f"{where}: token {token.name!r} has the secret of another token")
        tokens.append(token)
    return Tokens(tokens)


class TokenFile:
    """The tokens in force, read from one file at start and again on reload (SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tokens = load(path)

    def reload(self) -> int:
        """Read the file again; on error the tokens in force stay. How many tokens it holds."""
        self.tokens = load(self.path)
        return len(self.tokens)
