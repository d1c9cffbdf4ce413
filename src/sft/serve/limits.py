"""What a request to `sft serve` may be, for every API it speaks: the limits (batch, wait, items, body size), the
body read within them, and the error that answers a bad request with its 4xx status."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_items: int = 64  # per request
    max_body: int = 16 * 2**20  # bytes


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"request body is over the limit of {limit} bytes")
    if not body:
        raise BadRequest(400, "empty request body: send JSON ({\"images\": [...]} or {\"texts\": [...]}) or "
                              "multipart `file` parts")
    return bytes(body)
