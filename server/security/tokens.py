"""Bearer tokens and their scopes, read from a file of `<scope> <token>` lines.

A file (mounted from a secret store, mode 0600) keeps tokens out of `ps`, shell history and the
environment that child processes inherit. Nothing here imports grpc: the settings validate the file
with the same parser the interceptor's table is built from.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType

from protos.regular_files import read_or_refuse


class Scope(str, Enum):
    INFERENCE = "inference"  # every inference-service RPC except the admin ones; reflection
    ADMIN = "admin"  # repository load/unload (and later admin RPCs); grants inference too


# What a token of each scope may do.
GRANTS: dict[Scope, frozenset[Scope]] = {
    Scope.INFERENCE: frozenset({Scope.INFERENCE}),
    Scope.ADMIN: frozenset({Scope.INFERENCE, Scope.ADMIN}),
}

# Guessable tokens are refused at start-up; 16 visible characters is already ~100 bits of base64.
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096
# A tokens file is read whole at start-up: 16 MiB holds some 4,000 tokens of MAX_TOKEN_CHARS or
# 600,000 short ones (their table then takes about 80 MB; a lookup costs the same at any size).
MAX_TOKENS_FILE_BYTES = 16 << 20
_VISIBLE_ASCII = re.compile("[!-~]+")  # a regex: a loop over characters took 5 s for 600,000 tokens


class TokenFileError(ValueError):
    """A tokens file that cannot be used; the message names the line, never the token."""


@dataclass(frozen=True)
class TokenTable:
    """Configured tokens' scopes, keyed by each token's keyed BLAKE2b digest (a key of this table's own).

    A lookup is one digest and one dict probe, whatever the number of tokens: comparing the
    presented token with every configured one had cost 24 ms of the event loop per call with
    200,000 of them. The dict compares digests, never tokens, so its timing can tell at most how
    a digest of the presented token begins; the key (random, never stored) keeps even that from
    being worked out offline.
    """

    key: bytes = field(repr=False)
    scopes: Mapping[bytes, Scope] = field(repr=False)

    def scope_of(self, presented: str) -> Scope | None:
        """The scope of a presented token, or None when it is unknown."""
        return self.scopes.get(_digest(self.key, presented.encode("utf-8", "surrogateescape")))


def _digest(key: bytes, token: bytes) -> bytes:
    # BLAKE2b's keyed mode is a MAC, and three times as fast as HMAC-SHA256 here (1.4 µs a token).
    return hashlib.blake2b(token, key=key, digest_size=32).digest()


def _check_token(token: str, where: str) -> None:
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        raise TokenFileError(f"{where}: a token must have {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} characters")
    # Visible ASCII only: a token travels as an HTTP/2 header value.
    if not _VISIBLE_ASCII.fullmatch(token):
        raise TokenFileError(f"{where}: a token may contain only visible ASCII characters")


def parse_tokens(text: str, source: str = "tokens file") -> TokenTable:
    """`<scope> <token>` per line; blank lines and lines starting with '#' are skipped."""
    key = secrets.token_bytes(32)
    scopes: dict[bytes, Scope] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{source} line {number}"
        parts = stripped.split()
        if len(parts) != 2:
            raise TokenFileError(f"{where}: expected '<scope> <token>' (scopes: inference, admin)")
        name, token = parts
        try:
            scope = Scope(name)
        except ValueError:
            raise TokenFileError(f"{where}: unknown scope {name!r} (scopes: inference, admin)") from None
        _check_token(token, where)
        digest = _digest(key, token.encode("ascii"))
        if digest in scopes:
            raise TokenFileError(f"{where}: the same token is listed twice")
        scopes[digest] = scope
    if not scopes:
        raise TokenFileError(f"{source}: no tokens (auth would refuse every call)")
    return TokenTable(key, MappingProxyType(scopes))


def load_tokens(path: Path) -> TokenTable:
    """The table of the tokens file at `path`: a regular file of at most MAX_TOKENS_FILE_BYTES,
    checked before it is read (a FIFO had hung start-up, /dev/zero had ended in MemoryError)."""
    try:
        text = read_or_refuse(path, MAX_TOKENS_FILE_BYTES, "a tokens file", error=TokenFileError).decode(
            "utf-8"
        )
    except UnicodeDecodeError:
        raise TokenFileError(f"{path}: not UTF-8 text") from None
    return parse_tokens(text, str(path))
