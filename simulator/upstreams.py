"""Upstream pools of the proxy, with nginx's passive failure marking.

Balancing: `round_robin` is round robin. Omni-Infer's load-aware modules (pd_score_balance,
prefill_score_balance, weighted_least_active, greedy_timeout, least_total_load,
auto_balance_controller, length_balance) and nginx's default least_conn all become "least
active requests" (ties in round-robin order): that is what they approximate for equal-sized
requests, and the simulator has no token-level load signal to score with.

Failure: like `server ... max_fails=3 fail_timeout=10s`, a server that failed to connect 3
times within 10 s is skipped for 10 s.
"""

import itertools
import threading
import time

from . import netaddr

LOAD_AWARE = {"pd_score_balance", "prefill_score_balance", "weighted_least_active",
              "greedy_timeout", "least_total_load", "auto_balance_controller", "length_balance"}


def policy_for(lb_sdk: str) -> str:
    return "round_robin" if lb_sdk == "round_robin" else "least_active"


class Upstream:
    def __init__(self, addr: str):
        self.host, self.port = netaddr.split_hostport(addr)
        self.addr = f"{self.host}:{self.port}"
        self.active = 0
        self.fails = 0
        self.first_fail = 0.0
        self.down_until = 0.0


class Pool:
    def __init__(self, name: str, addrs: list[str], lb_sdk: str, max_num_seqs: int,
                 max_fails: int = 3, fail_timeout: float = 10.0, log=None):
        if not addrs:
            raise ValueError(f"{name}: empty server list")
        self.name = name
        self.servers = [Upstream(a) for a in addrs]
        self.lb_sdk = lb_sdk
        self.policy = policy_for(lb_sdk)
        self.max_num_seqs = max_num_seqs
        self.max_fails, self.fail_timeout = max_fails, fail_timeout
        self._rr = itertools.count()
        self._lock = threading.Lock()
        self.log = log

    def _usable(self, up: Upstream, now: float) -> bool:
        return up.down_until <= now

    def pick(self, exclude=()) -> Upstream | None:
        """Next server to try (its active count already taken), or None when every server
        not in exclude is marked down."""
        with self._lock:
            now = time.monotonic()
            n = len(self.servers)
            start = next(self._rr) % n
            order = [self.servers[(start + i) % n] for i in range(n)]
            cands = [u for u in order if u not in exclude and self._usable(u, now)]
            if not cands:
                return None
            up = cands[0] if self.policy == "round_robin" else min(cands, key=lambda u: u.active)
            up.active += 1
            return up

    def release(self, up: Upstream) -> None:
        with self._lock:
            up.active -= 1

    def failed(self, up: Upstream, reason: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - up.first_fail > self.fail_timeout:
                up.fails, up.first_fail = 0, now
            up.fails += 1
            marked = up.fails >= self.max_fails
            if marked:
                up.down_until = now + self.fail_timeout
                up.fails = 0
        if self.log:
            self.log("error", f"connect() to {up.addr} failed ({reason}) while connecting to "
                              f"upstream {self.name}")
            if marked:
                self.log("warn", f"upstream server {up.addr} of {self.name} temporarily "
                                 f"disabled for {self.fail_timeout:g}s after {self.max_fails} "
                                 "failures")

    def succeeded(self, up: Upstream) -> None:
        with self._lock:
            up.fails = 0

    def state(self) -> list[dict]:
        now = time.monotonic()
        with self._lock:
            return [{"server": u.addr, "active": u.active,
                     "marked_down": not self._usable(u, now)} for u in self.servers]
