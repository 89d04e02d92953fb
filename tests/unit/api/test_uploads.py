"""The upload limits of POST /api/v1/restorations (`app.api.uploads`): the file's size, as declared
and as it streams in, the form fields around it, and the shape of the multipart body."""

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.uploads import ENVELOPE_BYTES, MAX_PART_HEADER_BYTES, MAX_PARTS
from fixtures import images
from fixtures.accounts import Account
from tests.unit.helpers import count_jobs, upload

pytestmark = pytest.mark.anyio

URL = "/api/v1/restorations"


async def test_refuses_files_over_the_size_limit_with_413(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession, settings
) -> None:
    data = b"\xff\xd8\xff" + b"\x00" * settings.max_upload_bytes
    response = await client.post(URL, files=upload(data), headers=alice.headers)

    assert response.status_code == 413
    body = response.json()["error"]
    assert body["code"] == "payload_too_large"
    assert body["details"] == {"max_bytes": settings.max_upload_bytes}
    assert await count_jobs(session) == 0


async def test_size_limit_holds_while_streaming_without_content_length(
    client: httpx.AsyncClient, alice: Account, settings
) -> None:
    """A chunked body declares no length: the limit must hold on the bytes as they arrive."""
    boundary = "unit-boundary"
    chunks_sent = 0
    total_chunks = 64
    chunk = b"\x00" * (settings.max_upload_bytes // 8)

    async def body():
        nonlocal chunks_sent
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'.encode()
        for _ in range(total_chunks):
            chunks_sent += 1
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    response = await client.post(
        URL,
        content=body(),
        headers={**alice.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    # It stopped reading soon after the limit instead of taking the whole body.
    assert chunks_sent < total_chunks


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param(
            {"files": {"note": (None, "no file here")}}, "required", id="missing-file-field"
        ),
        pytest.param({"data": {"note": "urlencoded"}}, "multipart", id="urlencoded-form"),
        pytest.param(
            {"files": {"image": ("a.png", images.make_image(), "image/png")}},
            "required",
            id="wrong-field-name",
        ),
        pytest.param(
            {"content": b"raw bytes", "headers": {"Content-Type": "image/png"}},
            "multipart",
            id="not-multipart",
        ),
        pytest.param(
            {
                "content": b"--x\r\ngarbage",
                "headers": {"Content-Type": "multipart/form-data; boundary=x"},
            },
            "",
            id="malformed-multipart",
        ),
    ],
)
async def test_refuses_malformed_requests_with_422(
    client: httpx.AsyncClient, alice: Account, kwargs: dict, message: str
) -> None:
    headers = {**alice.headers, **kwargs.pop("headers", {})}
    response = await client.post(URL, headers=headers, **kwargs)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert message in error["message"]


async def test_form_fields_besides_the_file_are_limited_to_the_envelope(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession
) -> None:
    """Other parts are counted, not stored: past 64 KiB of them the request is refused with 413,
    though the file itself is small and the whole body is under the declared limit."""
    files = {
        **upload(images.make_image()),
        "note": (None, b"n" * (ENVELOPE_BYTES + 1)),
    }
    response = await client.post(URL, files=files, headers=alice.headers)

    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert error["message"] == "The form fields besides the file are too large."
    assert await count_jobs(session) == 0


async def test_form_fields_up_to_the_envelope_are_accepted(
    client: httpx.AsyncClient, alice: Account
) -> None:
    files = {**upload(images.make_image()), "note": (None, b"n" * ENVELOPE_BYTES)}
    response = await client.post(URL, files=files, headers=alice.headers)

    assert response.status_code == 202, response.text


async def test_two_file_parts_are_refused_with_422(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession
) -> None:
    """Which of two files to restore would be a guess: exactly one `file` part is accepted."""
    files = [
        ("file", ("a.png", images.make_image(seed=1), "image/png")),
        ("file", ("b.png", images.make_image(seed=2), "image/png")),
    ]
    response = await client.post(URL, files=files, headers=alice.headers)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"] == "Send exactly one 'file' part."
    assert await count_jobs(session) == 0


def multipart_headers(account: Account, boundary: str) -> dict[str, str]:
    return {**account.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}


def file_part(boundary: str, data: bytes) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + data


async def test_a_million_empty_parts_are_refused_after_the_first_few(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession
) -> None:
    """The issue's row: this body was read whole (61 MiB, 7.8 s) and then accepted."""
    boundary = "b"
    empty_part = f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n'.encode()
    parts_sent = 0

    async def body():
        nonlocal parts_sent
        for _ in range(1_000_000):
            parts_sent += 1
            yield empty_part
        yield file_part(boundary, images.make_image("JPEG")) + f"\r\n--{boundary}--\r\n".encode()

    response = await client.post(URL, content=body(), headers=multipart_headers(alice, boundary))

    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "too_many_parts"
    assert error["details"] == {"max_parts": MAX_PARTS}
    assert parts_sent < 100
    assert await count_jobs(session) == 0


async def test_oversized_part_headers_are_refused(
    client: httpx.AsyncClient, alice: Account
) -> None:
    boundary = "b"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n'.encode()
        + b"X-Padding: "
        + b"a" * (MAX_PART_HEADER_BYTES + 1)
        + b"\r\n\r\nvalue\r\n"
        + file_part(boundary, images.make_image("JPEG"))
        + f"\r\n--{boundary}--\r\n".encode()
    )

    response = await client.post(URL, content=body, headers=multipart_headers(alice, boundary))

    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "part_headers_too_large"


async def test_the_size_limit_covers_the_whole_body_not_only_the_file(
    client: httpx.AsyncClient, alice: Account, settings
) -> None:
    """Each part under every limit, the file under its own: the raw body is still too large."""
    boundary = "b"
    header_padding = b"X-Padding: " + b"a" * (MAX_PART_HEADER_BYTES - 100) + b"\r\n"
    padded_part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n'.encode()
        + header_padding
        + b"\r\n\r\n"
    )
    field_part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="y"\r\n\r\n'.encode()
        + b"v" * (ENVELOPE_BYTES // 2)
        + b"\r\n"
    )
    file_bytes = b"\xff\xd8\xff" + b"\x00" * (settings.max_upload_bytes - 100)
    chunks = [
        *[padded_part] * (MAX_PARTS - 2),
        field_part,
        file_part(boundary, file_bytes) + f"\r\n--{boundary}--\r\n".encode(),
    ]
    assert sum(map(len, chunks)) > settings.max_upload_bytes + ENVELOPE_BYTES

    async def body():
        for chunk in chunks:  # chunked: no Content-Length to check up front
            yield chunk

    response = await client.post(URL, content=body(), headers=multipart_headers(alice, boundary))

    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert error["details"]["max_body_bytes"] == settings.max_upload_bytes + ENVELOPE_BYTES
