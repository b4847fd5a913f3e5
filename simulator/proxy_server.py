"""The global proxy's request handling: the sequential two-hop PD flow.

For /v1/completions and /v1/chat/completions: one X-Request-Id for both hops; a prefill copy
of the body (stream off, stream_options dropped, max_tokens 1, kv_transfer_params asking for
remote decode); then the original body plus the prefill's kv_transfer_params to a decode
server, whose response is relayed as it arrives. usage.prompt_tokens_details.cached_tokens is
replaced with the prefill's value, as the vLLM-ascend and llm-d proxies do, because decode
counts the transferred KV as cached.
"""

import concurrent.futures
import http.client
import json
import socket
import time
import uuid

from . import SIMULATOR_ID, httpio
from .httpio import HttpError
from .upstreams import Pool, Upstream

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 14400.0  # proxy_read_timeout 14400s


class NoUpstream(Exception):
    pass


def _err(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": "proxy_error", "code": status},
            "simulator": SIMULATOR_ID}


def prefill_body(body: dict) -> dict:
    p = dict(body)
    p["stream"] = False
    p.pop("stream_options", None)
    p["max_tokens"] = 1
    if "max_completion_tokens" in p:
        p["max_completion_tokens"] = 1
    # A min_tokens above 1 would make the engine reject max_tokens=1.
    p.pop("min_tokens", None)
    p.pop("min_completion_tokens", None)
    p["kv_transfer_params"] = {"do_remote_decode": True, "do_remote_prefill": False,
                               "remote_engine_id": None, "remote_block_ids": None,
                               "remote_host": None, "remote_port": None}
    return p


def cached_tokens_of(resp: dict):
    details = (resp.get("usage") or {}).get("prompt_tokens_details") or {}
    val = details.get("cached_tokens")
    return val if isinstance(val, int) else None


def rewrite_usage(obj: dict, cached) -> bool:
    use = obj.get("usage")
    if cached is None or not isinstance(use, dict):
        return False
    details = use.get("prompt_tokens_details") or {}
    details["cached_tokens"] = cached
    use["prompt_tokens_details"] = details
    return True


def rewrite_sse_event(event: bytes, cached) -> bytes:
    """The event unchanged unless its data carries usage to fix."""
    if cached is None or b'"usage"' not in event:
        return event
    out = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
            try:
                obj = json.loads(line[5:])
            except ValueError:
                out.append(line)
                continue
            if isinstance(obj, dict) and rewrite_usage(obj, cached):
                line = b"data: " + json.dumps(obj).encode()
        out.append(line)
    return b"\n".join(out)


class Proxy:
    def __init__(self, prefill: Pool, decode: Pool, metrics: Pool | None, stream_ops: str, log):
        self.prefill, self.decode, self.metrics = prefill, decode, metrics
        self.stream_ops = stream_ops
        self.log = log

    def open(self, pool: Pool, method: str, path: str, body: bytes | None, headers: dict):
        """Send the request to the first server that accepts the connection. nginx does not
        retry a POST once it has been sent, so only connect failures move to the next one."""
        tried: set[Upstream] = set()
        while True:
            up = pool.pick(exclude=tried)
            if up is None:
                raise NoUpstream(f"no live upstreams in {pool.name} "
                                 f"(tried {sorted(u.addr for u in tried)})")
            tried.add(up)
            conn = http.client.HTTPConnection(up.host, up.port, timeout=CONNECT_TIMEOUT)
            try:
                conn.connect()
            except OSError as e:
                conn.close()
                pool.release(up)
                pool.failed(up, getattr(e, "strerror", None) or str(e) or type(e).__name__)
                continue
            conn.sock.settimeout(READ_TIMEOUT)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                pool.release(up)
                pool.failed(up, f"upstream closed the connection: {e or type(e).__name__}")
                raise HttpError(502, f"upstream {up.addr} failed while handling the request: "
                                     f"{e or type(e).__name__}") from None
            pool.succeeded(up)
            return up, conn, resp

    def probe(self, up: Upstream) -> dict:
        try:
            conn = http.client.HTTPConnection(up.host, up.port, timeout=1.0)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            return {"server": up.addr, "up": resp.status == 200, "status": resp.status}
        except (OSError, http.client.HTTPException) as e:
            return {"server": up.addr, "up": False,
                    "error": getattr(e, "strerror", None) or str(e) or type(e).__name__}


class Handler(httpio.Handler):
    proxy: Proxy  # set on the subclass made by make_server

    def _log(self, level: str, msg: str) -> None:
        self.proxy.log(level, msg)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._health()
        elif path == "/v1/models":
            self._models()
        elif path == "/metrics" and self.proxy.metrics is not None:
            self._relay(self.proxy.metrics, "GET", self.path, None)
        elif path.startswith("/v1"):
            self._relay(self.proxy.prefill, "GET", self.path, None)
        else:
            self.send_json(404, _err(404, f"no route for {path}"))

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path in ("/v1/completions", "/v1/chat/completions"):
            self._two_hop(path)
        elif path.startswith("/v1"):
            try:
                body = self.read_body()
            except HttpError as e:
                self.send_json(e.status, _err(e.status, e.message))
                return
            self._relay(self.proxy.prefill, "POST", self.path, body)
        else:
            self.send_json(404, _err(404, f"no route for {path}"))

    def _health(self):
        p = self.proxy
        ups = [("prefill", u) for u in p.prefill.servers] + [("decode", u) for u in p.decode.servers]
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(ups))) as ex:
            results = list(ex.map(lambda x: (x[0], p.probe(x[1])), ups))
        out = {"status": "ok", "simulator": SIMULATOR_ID}
        for role, pool in (("prefill", p.prefill), ("decode", p.decode)):
            mine = [r for k, r in results if k == role]
            marks = {s["server"]: s["marked_down"] for s in pool.state()}
            for r in mine:
                r["marked_down"] = marks.get(r["server"], False)
            out[role] = {"total": len(mine), "up": [r["server"] for r in mine if r["up"]],
                         "down": [r["server"] for r in mine if not r["up"]],
                         "lb": pool.lb_sdk, "servers": mine}
        out["ready"] = bool(out["prefill"]["up"]) and bool(out["decode"]["up"])
        self.send_json(200, out)

    def _models(self):
        p = self.proxy
        for up in p.decode.servers:
            try:
                conn = http.client.HTTPConnection(up.host, up.port, timeout=2.0)
                conn.request("GET", "/health")
                ok = conn.getresponse()
                ok.read()
                if ok.status != 200:
                    conn.close()
                    continue
                conn.request("GET", "/v1/models")
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
            except (OSError, http.client.HTTPException):
                continue
            if resp.status == 200:
                self.send_bytes(200, data, "application/json")
                return
        self.send_json(503, _err(503, "no healthy decode server to list models from"))

    def _relay(self, pool: Pool, method: str, path: str, body: bytes | None):
        headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
        try:
            up, conn, resp = self.proxy.open(pool, method, path, body, headers)
        except NoUpstream as e:
            self.send_json(503, _err(503, str(e)))
            return
        except HttpError as e:
            self.send_json(e.status, _err(e.status, e.message))
            return
        try:
            data = resp.read()
        finally:
            conn.close()
            pool.release(up)
        self.send_bytes(resp.status, data, resp.getheader("Content-Type", "application/json"))

    def _open_hop(self, pool, path: str, body: dict, fwd: dict, rid: str, hdr: dict):
        """Sends one hop to an upstream of `pool`; on failure answers the client and returns None."""
        try:
            return self.proxy.open(pool, "POST", path, json.dumps(body).encode(), fwd)
        except NoUpstream as e:
            self._log("error", f"request {rid}: {e}")
            self.send_json(503, _err(503, str(e)), hdr)
        except HttpError as e:
            self.send_json(e.status, _err(e.status, e.message), hdr)
        return None

    def _two_hop(self, path: str):
        t0 = time.monotonic()
        rid = self.headers.get("X-Request-Id") or uuid.uuid4().hex
        hdr = {"X-Request-Id": rid}
        try:
            body = self.read_json()
        except HttpError as e:
            self.send_json(e.status, _err(e.status, e.message), hdr)
            return
        self._stream_ops(body)
        fwd = {"Content-Type": "application/json", "X-Request-Id": rid}
        if self.headers.get("Authorization"):
            fwd["Authorization"] = self.headers["Authorization"]
        p = self.proxy
        # Hop 1: prefill.
        opened = self._open_hop(p.prefill, path, prefill_body(body), fwd, rid, hdr)
        if opened is None:
            return
        pup, pconn, presp = opened
        try:
            pdata = presp.read()
        except OSError as e:
            self.send_json(502, _err(502, f"prefill {pup.addr} failed: {e}"), hdr)
            return
        finally:
            pconn.close()
            p.prefill.release(pup)
        if presp.status != 200:
            self._log("warn", f"request {rid}: prefill {pup.addr} answered {presp.status}")
            self.send_bytes(presp.status, pdata,
                            presp.getheader("Content-Type", "application/json"), hdr)
            return
        try:
            pjson = json.loads(pdata)
        except ValueError:
            self.send_json(502, _err(502, f"prefill {pup.addr} sent a non-JSON answer"), hdr)
            return
        kvp = pjson.get("kv_transfer_params")
        cached = cached_tokens_of(pjson)
        dbody = dict(body)
        if kvp:
            dbody["kv_transfer_params"] = kvp
        else:
            self._log("warn", f"request {rid}: prefill {pup.addr} returned no "
                              "kv_transfer_params; decode will recompute the prompt")
        # Hop 2: decode, relayed as it arrives.
        opened = self._open_hop(p.decode, path, dbody, fwd, rid, hdr)
        if opened is None:
            return
        dup, dconn, dresp = opened
        try:
            self._relay_decode(dresp, cached, hdr)
        finally:
            dconn.close()
            p.decode.release(dup)
        self._log("info", f'{self.client_address[0]} "POST {path}" {dresp.status} '
                          f"request_id={rid} prefill={pup.addr} decode={dup.addr} "
                          f"{time.monotonic() - t0:.3f}s")

    def _stream_ops(self, body: dict) -> None:
        ops = self.proxy.stream_ops
        if ops == "off" or not body.get("stream"):
            return
        opts = body.get("stream_options")
        if ops == "add" and opts is None:
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        elif ops == "set_opt":
            opts = opts if isinstance(opts, dict) else {}
            opts.update(include_usage=True, continuous_usage_stats=True)
            body["stream_options"] = opts

    def _relay_decode(self, resp, cached, hdr: dict):
        ctype = resp.getheader("Content-Type", "application/json")
        if not ctype.startswith("text/event-stream"):
            data = resp.read()
            if resp.status == 200 and cached is not None:
                try:
                    obj = json.loads(data)
                    if isinstance(obj, dict) and rewrite_usage(obj, cached):
                        data = json.dumps(obj).encode()
                except ValueError:
                    pass
            self.send_bytes(resp.status, data, ctype, hdr)
            return
        self.start_chunked(resp.status, ctype, hdr)
        event = b""
        try:
            while True:
                line = resp.readline()
                if not line:
                    break
                event += line
                if line in (b"\n", b"\r\n"):
                    self.write_chunk(rewrite_sse_event(event, cached))
                    event = b""
            self.write_chunk(rewrite_sse_event(event, cached))
            self.end_chunked()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # client gone; closing upstream aborts decode
        except (OSError, socket.timeout, http.client.HTTPException) as e:
            self._log("error", f"decode stream broke: {e}")
            self.close_connection = True


def make_server(host: str, port: int, proxy: Proxy) -> httpio.Server:
    handler = type("ProxyHandler", (Handler,), {"proxy": proxy})
    return httpio.Server((host, port), handler)
