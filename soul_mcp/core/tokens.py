"""Bearer tokens for the HTTP server: how they are made, named, scoped and recognised.

A token is `soul_` followed by 32 random bytes (URL-safe base64). The store keeps only its SHA-256:
with 256 bits of randomness nobody can find a token from its hash by guessing, so the slow hashes
made for passwords would add nothing but cost on every request; an equality lookup on the hash is
also what lets a request find its token in one indexed read.

The OAuth server (`serve --http --oauth`) makes its codes and tokens the same way, and keeps the
owner passphrase, which a person chose and so is guessable, as a slow scrypt hash.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from soul_mcp.errors import InvalidInput
from soul_mcp.models import SCOPES

PREFIX = "soul_"
# A name becomes the author of everything written with the token: short, plain, no spaces.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def name(value: str) -> str:
    value = value.strip() if isinstance(value, str) else value
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidInput(
            f"token name {value!r} is not allowed: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. 'laptop' or 'cursor-work')"
        )
    return value


def scopes(values: list[str] | tuple[str, ...] | str) -> tuple[str, ...]:
    """Scopes from a list or a comma-separated string, de-duplicated, in the canonical order."""
    if isinstance(values, str):
        values = values.split(",")
    wanted = {v.strip().lower() for v in values if v.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise InvalidInput(
            f"unknown scope {', '.join(map(repr, unknown))}; scopes are read (wake_up, recall, reading), "
            "write (remember, forget, revise_memory, the intent) and identity (soul, north star, identity)"
        )
    if not wanted:
        raise InvalidInput("a token needs at least one scope: read, write or identity")
    return tuple(s for s in SCOPES if s in wanted)


# OAuth (`serve --http --oauth`) ------------------------------------------------------------------
# Its tokens are as random as the static ones and hashed the same way; their prefixes tell the
# server which table to look in (neither starts with PREFIX).
ACCESS_PREFIX = "soulat_"
REFRESH_PREFIX = "soulrt_"
CODE_PREFIX = "soulac_"


def new_oauth_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


# The owner's passphrase is chosen by a person, so it is guessable: kept as a scrypt hash (RFC
# 7914) with a random salt. n=2**15, r=8 takes ~32 MiB and a few tens of milliseconds a check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MIN_PASSPHRASE_CHARS = 12


def passphrase_hash(passphrase: str) -> str:
    """`scrypt$n$r$p$salt$hash` (hex), for `passphrase_matches`."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise InvalidInput(
            f"the owner passphrase needs at least {MIN_PASSPHRASE_CHARS} characters (a few words are easy to "
            "type and hard to guess)"
        )
    salt = secrets.token_bytes(16)
    digest = _scrypt(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def passphrase_matches(passphrase: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        found = _scrypt(passphrase, bytes.fromhex(salt), int(n), int(r), int(p))
    except (ValueError, MemoryError):
        return False
    return secrets.compare_digest(found, bytes.fromhex(digest))


def _scrypt(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        passphrase.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=64 * 1024 * 1024,
        dklen=32,
    )
