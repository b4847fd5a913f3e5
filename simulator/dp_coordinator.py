"""Data-parallel rendezvous.

Real vLLM DP ranks meet at (data-parallel-address, data-parallel-rpc-port), which rank 0
listens on; a rank pointed at the wrong address or port never finishes start-up. Here rank 0
runs a small coordinator there, every rank (rank 0 too) registers over TCP, and a rank
becomes ready only once all DP_SIZE ranks have registered. A registration lives as long as
its connection, so a restarted rank can register again.
"""

import socket
import threading
import time

from . import jsonline, netaddr
from .log import Log

log = Log("dp_coordinator.py")


class DPError(Exception):
    """A fatal wiring error: the process must exit."""


class Coordinator:
    def __init__(self, address: str, port: int, size: int):
        self.size = size
        self.members: dict[int, dict] = {}
        self.formed = False
        self._lock = threading.Lock()
        try:
            ip = netaddr.resolve(address)
        except OSError as e:
            raise DPError(f"cannot resolve data-parallel-address {address!r}: {e}") from None
        if not netaddr.is_local(ip):
            raise DPError(
                f"DP rank 0 cannot listen on data-parallel-address {address} ({ip}): it is not "
                f"an address of this host {netaddr.interface_addresses()}")
        try:
            self.server = jsonline.Server((ip, port), self._handle, self._closed)
        except OSError as e:
            raise DPError(f"DP rank 0 cannot bind the DP coordinator on {ip}:{port}: {e}") from None
        self.address = f"{ip}:{port}"

    def start(self) -> None:
        self.server.start_background("dp-coordinator")
        log.info(f"DP coordinator listening on {self.address} for {self.size} ranks")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _status(self) -> dict:
        return {"ok": True, "joined": len(self.members), "size": self.size,
                "ranks": sorted(self.members)}

    def _handle(self, conn, msg: dict) -> dict:
        op = msg.get("op")
        with self._lock:
            if op == "status":
                return self._status()
            if op != "register":
                return {"ok": False, "error": f"unknown op {op!r}"}
            rank, size = msg.get("rank"), msg.get("size")
            if size != self.size:
                return {"ok": False, "error": f"DP size mismatch: rank {rank} says "
                        f"VLLM_DP_SIZE={size}, the coordinator at {self.address} runs {self.size}"}
            if not isinstance(rank, int) or not 0 <= rank < self.size:
                return {"ok": False, "error": f"DP rank {rank} is outside 0..{self.size - 1}"}
            held = self.members.get(rank)
            if held and held["conn"] is not conn:
                return {"ok": False, "error": f"duplicate DP rank {rank}: already registered "
                        f"by the server at {held['api']}"}
            self.members[rank] = {"conn": conn, "api": msg.get("api")}
            log.info(f"DP rank {rank} joined from {msg.get('api')} "
                     f"({len(self.members)}/{self.size})")
            if len(self.members) == self.size and not self.formed:
                self.formed = True
                log.info(f"DP group complete: all {self.size} ranks joined")
            return self._status()

    def _closed(self, conn) -> None:
        with self._lock:
            for rank, m in list(self.members.items()):
                if m["conn"] is conn:
                    del self.members[rank]
                    log.warning(f"DP rank {rank} ({m['api']}) disconnected "
                                f"({len(self.members)}/{self.size} remain)")


class Member:
    """One rank's side: register, then poll until the group is complete."""

    def __init__(self, address: str, port: int, rank: int, size: int, api: str,
                 on_progress, poll_interval: float = 0.2):
        self.target = f"{address}:{port}"
        self.address, self.port = address, port
        self.rank, self.size, self.api = rank, size, api
        self.on_progress = on_progress
        self.poll = poll_interval
        self.sock: socket.socket | None = None

    def join(self) -> None:
        """Blocks until every rank has joined. Raises DPError on a fatal answer; keeps
        retrying while the coordinator is unreachable, as a real rank waits for its master."""
        attempt = 0
        while True:
            attempt += 1
            try:
                sock = jsonline.connect(netaddr.resolve(self.address), self.port, timeout=3.0)
            except OSError as e:
                reason = getattr(e, "strerror", None) or str(e)
                self.on_progress(f"waiting for DP coordinator at {self.target}: {reason} "
                                 f"(attempt {attempt})")
                if attempt == 1 or attempt % 20 == 0:
                    log.warning(f"DP rank {self.rank}: cannot reach DP coordinator at "
                                f"{self.target}: {reason}; retrying")
                time.sleep(0.5)
                continue
            try:
                if self._register_and_wait(sock):
                    self.sock = sock
                    threading.Thread(target=self._watch, name="dp-watch", daemon=True).start()
                    return
            except (OSError, jsonline.ProtocolError) as e:
                log.warning(f"DP rank {self.rank}: connection to {self.target} lost: {e}")
            sock.close()
            time.sleep(0.5)

    def _register_and_wait(self, sock) -> bool:
        rfile = sock.makefile("rb")
        jsonline.send(sock, {"op": "register", "rank": self.rank, "size": self.size,
                             "api": self.api})
        while True:
            reply = jsonline.recv(rfile)
            if reply is None:
                return False
            if not reply.get("ok"):
                raise DPError(f"DP coordinator at {self.target} refused rank {self.rank}: "
                              f"{reply.get('error')}")
            joined, size = reply["joined"], reply["size"]
            self.on_progress(f"DP group at {self.target}: {joined}/{size} ranks joined "
                             f"(ranks {reply.get('ranks')})")
            if joined >= size:
                log.info(f"DP rank {self.rank}: all {size} ranks joined at {self.target}")
                return True
            time.sleep(self.poll)
            jsonline.send(sock, {"op": "status"})

    def _watch(self) -> None:
        sock = self.sock
        sock.settimeout(None)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass
        log.warning(f"DP rank {self.rank}: lost the DP coordinator at {self.target}")
