"""API tokens: random, recognisable, stored only as a SHA-256 digest."""

import hashlib
import re

from app.core.security import TOKEN_PREFIX, generate_token, hash_token


def test_tokens_are_prefixed_url_safe_and_unique() -> None:
    tokens = [generate_token() for _ in range(200)]

    assert len(set(tokens)) == len(tokens)
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX)
        # 32 random bytes in URL-safe base64, no padding: 43 characters, 256 bits.
        assert re.fullmatch(r"rst_[A-Za-z0-9_-]{43}", token), token


def test_hash_is_the_sha256_hex_digest() -> None:
    token = "rst_example"

    digest = hash_token(token)

    assert digest == hashlib.sha256(b"rst_example").hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert hash_token(token) == digest  # deterministic: the lookup key of a token
    assert hash_token(token + "x") != digest
    assert token not in digest


def test_hash_of_non_ascii_text_is_of_its_utf8_bytes() -> None:
    assert hash_token("rst_é") == hashlib.sha256("rst_é".encode()).hexdigest()
