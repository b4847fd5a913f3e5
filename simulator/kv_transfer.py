"""Prefill -> decode KV hand-over.

On hardware the prefill engine keeps a request's KV blocks after answering with max_tokens=1,
and the decode engine pulls them over the NPU network from the address named in
kv_transfer_params. Here the "KV" is the prompt's token ids plus a checksum, held by the
prefill engine for a lease and served over TCP on VLLM_LLMDATADIST_ZMQ_PORT + local DP rank.
A decode engine given a wrong host, port, engine id or request id fails the request with an
error naming the address it tried, which is what a misrouted transfer looks like in practice.
"""

import itertools
import threading
import time

from . import jsonline, textgen
from .log import Log

log = Log("kv_transfer.py")

DEFAULT_LEASE_SECONDS = 30.0


class KVTransferError(Exception):
    pass


class KVStore:
    """Prefill side: KV of finished prefills, waiting for their decode engine."""

    def __init__(self, host: str, port: int, engine_id, lease: float, on_served):
        self.engine_id = engine_id
        self.lease = lease
        self.on_served = on_served
        self._items: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._blocks = itertools.count()
        try:
            self.server = jsonline.Server((host, port), self._handle)
        except OSError as e:
            raise KVTransferError(f"cannot listen for KV transfers on {host}:{port}: {e}") from None
        self.host, self.port = host, port

    def start(self) -> None:
        self.server.start_background("kv-store")
        log.info(f"KV transfer endpoint listening on {self.host}:{self.port} "
                 f"(engine_id {self.engine_id}, lease {self.lease:g}s)")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _purge(self, now: float) -> None:
        for rid in [r for r, v in self._items.items() if v["expires"] < now]:
            del self._items[rid]
            log.warning(f"KV of request {rid} freed: no decode engine fetched it within "
                        f"{self.lease:g}s")

    def put(self, request_id: str, token_ids: list[int], block_size: int) -> list[int]:
        n_blocks = max(1, -(-len(token_ids) // block_size))
        with self._lock:
            now = time.monotonic()
            self._purge(now)
            blocks = [next(self._blocks) for _ in range(n_blocks)]
            self._items[request_id] = {"token_ids": list(token_ids),
                                       "checksum": textgen.kv_checksum(token_ids),
                                       "expires": now + self.lease, "blocks": blocks}
        return blocks

    def _handle(self, conn, msg: dict) -> dict:
        if msg.get("op") == "ping":
            return {"ok": True, "engine_id": self.engine_id}
        if msg.get("op") != "fetch":
            return {"ok": False, "error": f"unknown op {msg.get('op')!r}"}
        rid, want = msg.get("request_id"), msg.get("engine_id")
        if want is not None and str(want) != str(self.engine_id):
            return {"ok": False, "error": f"this KV endpoint belongs to engine_id "
                    f"{self.engine_id}, not {want}"}
        with self._lock:
            self._purge(time.monotonic())
            item = self._items.pop(rid, None)
        if item is None:
            return {"ok": False, "error": f"no KV held for request {rid} (never prefilled "
                    f"here, already fetched, or its {self.lease:g}s lease ran out)"}
        self.on_served()
        return {"ok": True, "engine_id": self.engine_id, "token_ids": item["token_ids"],
                "checksum": item["checksum"], "block_ids": item["blocks"]}


def fetch(host: str, port, request_id: str, engine_id, expected_ids: list[int],
          timeout: float = 5.0) -> int:
    """Decode side: pull and verify one request's KV; returns the number of tokens moved."""
    where = f"{host}:{port}"
    try:
        reply = jsonline.call(str(host), int(port),
                              {"op": "fetch", "request_id": request_id, "engine_id": engine_id},
                              timeout=timeout)
    except (OSError, ValueError, jsonline.ProtocolError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise KVTransferError(f"KV transfer from prefill engine at {where} failed: "
                              f"{reason}") from None
    if not reply.get("ok"):
        raise KVTransferError(f"KV transfer from prefill engine at {where} failed: "
                              f"{reply.get('error')}")
    ids = reply.get("token_ids") or []
    if textgen.kv_checksum(ids) != reply.get("checksum"):
        raise KVTransferError(f"KV transfer from prefill engine at {where} failed: checksum "
                              f"mismatch for request {request_id}")
    if ids != expected_ids:
        raise KVTransferError(f"KV transfer from prefill engine at {where} failed: the KV of "
                              f"request {request_id} belongs to a different prompt "
                              f"({len(ids)} tokens there, {len(expected_ids)} here)")
    return len(ids)
