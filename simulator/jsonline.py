"""Newline-delimited JSON over TCP: the wire format of the simulator's side channels
(DP coordinator, KV transfer, Ray stand-in). Real engines use ZMQ/gRPC/HCCL there; what
matters for the simulation is that a wrong address or port fails the same way."""

import json
import socket
import socketserver
import threading

MAX_LINE = 64 * 1024 * 1024


class ProtocolError(Exception):
    pass


def send(sock: socket.socket, obj) -> None:
    sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def recv(rfile) -> dict | None:
    """Next message, or None when the peer closed the connection."""
    line = rfile.readline(MAX_LINE)
    if not line:
        return None
    try:
        msg = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"bad message from peer: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad message from peer: not an object")
    return msg


def connect(host: str, port: int, timeout: float, source: str | None = None) -> socket.socket:
    src = (source, 0) if source else None
    sock = socket.create_connection((host, port), timeout=timeout, source_address=src)
    sock.settimeout(timeout)
    return sock


def call(host: str, port: int, msg: dict, timeout: float = 5.0) -> dict:
    """One request, one reply, on a fresh connection."""
    with connect(host, port, timeout) as sock:
        send(sock, msg)
        reply = recv(sock.makefile("rb"))
    if reply is None:
        raise ProtocolError(f"{host}:{port} closed the connection without answering")
    return reply


class Server(socketserver.ThreadingTCPServer):
    """Calls handler(conn, msg) for each message; handler returns the reply (or None for
    no reply). on_close(conn) runs when a peer disconnects, so state tied to a live
    connection (a DP rank, a Ray node) goes away with it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, on_close=None):
        self.handler = handler
        self.on_close = on_close
        super().__init__(addr, _Conn)

    def start_background(self, name: str) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name=name, daemon=True)
        t.start()
        return t


class _Conn(socketserver.StreamRequestHandler):
    def handle(self):
        srv: Server = self.server
        try:
            while True:
                try:
                    msg = recv(self.rfile)
                except ProtocolError as e:
                    send(self.connection, {"ok": False, "error": str(e)})
                    return
                if msg is None:
                    return
                reply = srv.handler(self, msg)
                if reply is not None:
                    send(self.connection, reply)
        except OSError:
            return
        finally:
            if srv.on_close:
                srv.on_close(self)
