"""Hypothesis on what an upload carries: mutated JPEG, PNG, WebP and TIFF files, and multipart
framing. Every answer is one the endpoint documents (202, 413, 415 or 422), in the error shape
when it is an error, and leaks nothing; an accepted job can be read back."""

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures import images
from tests.fuzz.tally import FUZZ_UPLOADS, record

# Pillow warns about the broken TIFF tags it skips; the answer is what is checked.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")

URL = "/api/v1/restorations"
ANSWERS = {202, 413, 415, 422}
SEEDS = {fmt: images.make_image(fmt, (24, 16), seed=3) for fmt in ("JPEG", "PNG", "WEBP", "TIFF")}


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """`seed` with a few byte-level edits: flips, overwrites, insertions, cuts, repeats."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["flip", "overwrite", "insert", "cut", "repeat", "truncate"]))
        if edit == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif edit == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[position : position + len(chunk)] = chunk
        elif edit == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif edit == "cut":
            del data[position : position + draw(st.integers(1, 64))]
        elif edit == "repeat":
            data[position:position] = data[position : position + draw(st.integers(1, 256))]
        else:
            del data[position:]
    # Appended data (a ZIP, say) is stripped by the API, not refused.
    if draw(st.booleans()):
        data += draw(st.sampled_from([b"", b"PK\x03\x04", images.zip_archive()]))
    return bytes(data)


def check_answer(http: httpx.Client, response: httpx.Response, label: str) -> None:
    record(response, label)
    assert response.status_code in ANSWERS, response.text
    body = response.json()
    if response.status_code == 202:
        job = http.get(f"{URL}/{body['id']}")
        record(job, f"GET {URL}/{{id}}")
        assert job.status_code == 200
    else:
        assert set(body["error"]) == {"code", "message", "details"}


@pytest.mark.parametrize("fmt", list(SEEDS))
def test_mutated_images(http: httpx.Client, fmt: str) -> None:
    @given(data=mutated(SEEDS[fmt]))
    @FUZZ_UPLOADS
    def run(data: bytes) -> None:
        response = http.post(URL, files={"file": ("photo", data, "application/octet-stream")})
        check_answer(http, response, f"POST {URL} ({fmt}, mutated)")

    run()


TOKENS = st.sampled_from(
    [
        b"\r\n",
        b"--",
        b"\r\n\r\n",
        b'Content-Disposition: form-data; name="file"; filename="a.jpg"',
        b'Content-Disposition: form-data; name="note"',
        b"Content-Disposition: form-data",
        b'name="file"',
        b"Content-Type: image/jpeg",
        b";",
        b":",
        b'"',
        b"\x00",
        b"\xff",
    ]
)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """A well-formed body bent out of shape: extra, missing or doubled parts, odd headers,
    a boundary that lies, fragments of framing in odd places."""
    boundary = draw(st.sampled_from(["b", "----fuzz", "x" * 70, "a b", ""]))
    declared = draw(st.sampled_from([boundary, boundary, "other", '"' + boundary + '"']))
    delimiter = f"--{boundary}".encode()
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["file", "field", "junk"]))
        if kind == "file":
            headers = b'Content-Disposition: form-data; name="file"; filename="a"\r\n'
            content = draw(st.sampled_from([*SEEDS.values(), b"", b"not an image"]))
        elif kind == "field":
            headers = b'Content-Disposition: form-data; name="note"\r\n'
            content = draw(st.binary(max_size=64))
        else:
            headers = b"".join(draw(st.lists(TOKENS, max_size=6)))
            content = draw(st.binary(max_size=64))
        parts.append(delimiter + b"\r\n" + headers + b"\r\n" + content + b"\r\n")
    body = (
        draw(st.binary(max_size=16))  # preamble
        + b"".join(parts)
        + draw(st.sampled_from([delimiter + b"--\r\n", delimiter + b"--", delimiter, b""]))
        + draw(st.binary(max_size=16))  # epilogue
    )
    # Splice framing fragments in at random places.
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(TOKENS) + body[at:]
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={declared}",
                "multipart/form-data",
                "multipart/mixed; boundary=b",
                "application/octet-stream",
            ]
        )
    )
    return {"Content-Type": content_type}, body


def test_multipart_framing(http: httpx.Client) -> None:
    @given(request=multipart_bodies())
    @FUZZ_UPLOADS
    def run(request: tuple[dict[str, str], bytes]) -> None:
        headers, body = request
        response = http.post(URL, content=body, headers=headers)
        check_answer(http, response, f"POST {URL} (multipart framing)")

    run()
