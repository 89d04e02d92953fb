"""API tokens: random, shown once, stored only as a SHA-256 digest.

Tokens carry 256 bits of randomness, so a fast unsalted digest is enough (as for GitHub tokens):
a slow password hash would only slow down every request.
"""

import hashlib
import secrets

TOKEN_PREFIX = "rst_"  # noqa: S105 - a recognisable prefix, not a secret


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
