"""HTTP/1.1 plumbing shared by the engine's API server and the proxy (stdlib http.server)."""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import SIMULATOR_ID

MAX_BODY = 100 * 1024 * 1024  # nginx client_max_body_size 100m in Omni's proxy config


class HttpError(Exception):
    def __init__(self, status: int, message: str, etype: str = "BadRequestError"):
        super().__init__(message)
        self.status, self.message, self.etype = status, message, etype


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # access logging is done by the subclasses
        pass

    def version_string(self) -> str:
        return SIMULATOR_ID.replace(" ", "/")

    def simulator_headers(self) -> None:
        self.send_header("X-Simulator", SIMULATOR_ID)

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if n > MAX_BODY:
            raise HttpError(413, f"request body of {n} bytes exceeds {MAX_BODY}")
        return self.rfile.read(n) if n else b""

    def _read_chunked(self) -> bytes:
        out = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += self.rfile.read(size)
            self.rfile.readline()
            if len(out) > MAX_BODY:
                raise HttpError(413, f"request body exceeds {MAX_BODY} bytes")

    def read_json(self) -> dict:
        raw = self.read_body()
        try:
            body = json.loads(raw or b"null")
        except ValueError as e:
            raise HttpError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "request body must be a JSON object")
        return body

    def send_bytes(self, status: int, data: bytes, ctype: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.simulator_headers()
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status: int, obj, headers: dict | None = None) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), "application/json", headers)

    def start_chunked(self, status: int, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.simulator_headers()
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
