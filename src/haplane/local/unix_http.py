"""One HTTP/1.1 request to the supervisor's Unix socket, on a bare socket.

Layer: run (local). Standard library only (`socket`, `json`); what `haplane status --json`
and `haplane fault` send when the supervisor answers, before anything else is imported.

Why not `stdlib_http` (`http.client`), which speaks to the platform's TLS listeners: it
imports `ssl`, `email` and `urllib` behind `http.client`, ~35 ms on a quiet machine and
~100 ms with the two-regions example busy beside it, for a connection that needs no TLS and
one request whose answer the supervisor (aiohttp) always sends with a Content-Length. This
reads what aiohttp sends: a status line, headers, and a body of Content-Length bytes or
chunked; anything else is an error, never a guess.
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

MAX_ANSWER = 64 * 1024 * 1024
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class UnixHttpError(Exception):
    """The socket could not be reached, did not answer in time, or not in HTTP."""


class MalformedAnswer(UnixHttpError):
    """Something answered, but not a whole HTTP answer (or a larger one than any status)."""


def request(
    socket_path: str, method: str, path: str, body: Any = None, *, timeout: float
) -> tuple[int, bytes]:
    """Send `method path` (with `body` as JSON, if any) and return the answer's status and
    body, all within `timeout` seconds (a server that drips its answer is cut there).
    Errors say what the standard library's client said (`[Errno 111] Connection refused`,
    `no answer within 30 s`), as `haplane fault` always printed them."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: supervisor\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    deadline = time.monotonic() + timeout

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(left())
            sock.connect(socket_path)
            sock.settimeout(left())
            sock.sendall(head.encode() + b"\r\n" + payload)
            data = bytearray()
            while True:
                sock.settimeout(left())
                chunk = sock.recv(262144)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_ANSWER:
                    raise MalformedAnswer(f"an answer larger than {MAX_ANSWER} bytes")
                if _complete(data):
                    break
    except TimeoutError:
        raise UnixHttpError(f"no answer within {timeout:g} s") from None
    except OSError as exc:
        raise UnixHttpError(str(exc) or type(exc).__name__) from None
    if not data:  # as http.client says it
        raise UnixHttpError("Remote end closed connection without response")
    return parse(bytes(data))


def _headers(lines: list[bytes]) -> dict[bytes, bytes]:
    """Header lines (after the status line) by lower-cased name, the last of a name winning."""
    headers: dict[bytes, bytes] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            raise MalformedAnswer(f"malformed header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def _complete(data: bytearray) -> bool:
    """Whether a Content-Length answer is all here (other answers end with the connection)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    length = _headers(bytes(data[:end]).split(b"\r\n")[1:]).get(b"content-length", b"")
    return length.isdigit() and len(data) - end - 4 >= int(length)


def parse(data: bytes) -> tuple[int, bytes]:
    """Status and body of one whole answer, as read until the server closed."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise MalformedAnswer("the answer ended before its headers did")
    lines = head.split(b"\r\n")
    version, _, status_text = lines[0].partition(b" ")
    code = status_text[:3]
    if not version.startswith(b"HTTP/1.") or not code.isdigit():
        raise MalformedAnswer(f"not an HTTP answer: {lines[0][:80]!r}")
    headers = _headers(lines[1:])
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit() or len(rest) < int(length):
            raise MalformedAnswer("the answer ended before its body did")
        return int(code), rest[: int(length)]
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        return int(code), _dechunk(rest)
    return int(code), rest  # HTTP/1.1 without a length: the body ends with the connection


def _dechunk(rest: bytes) -> bytes:
    body = bytearray()
    while True:
        size_line, sep, rest = rest.partition(b"\r\n")
        size_text = size_line.split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):
            raise MalformedAnswer(f"malformed chunk size: {size_line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            return bytes(body)
        if not sep or len(rest) < size + 2:
            raise MalformedAnswer("the answer ended inside a chunk")
        if rest[size : size + 2] != b"\r\n":
            raise MalformedAnswer("a chunk longer than its size")
        body += rest[:size]
        rest = rest[size + 2 :]
