"""Sustained streaming load through the proxy: N clients, each sending streaming completions back to
back for a fixed time. Prints figures (requests/s, latency percentiles), not verdicts."""
from __future__ import annotations

import json
import statistics
import threading
import time

import requests

BODY = {"model": "deepseek", "temperature": 0, "max_tokens": 16, "prompt": "load",
        "stream": True, "stream_options": {"include_usage": True}}


def _client(url: str, until: float, latencies: list[float], errors: list[str]) -> None:
    session = requests.Session()
    session.trust_env = False  # the testbed is reached directly, never through a proxy
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            with session.post(url, json=BODY, stream=True, timeout=60) as resp:
                if resp.status_code != 200:
                    raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
                done = usage = False
                for line in resp.iter_lines():
                    if line == b"data: [DONE]":
                        done = True
                    elif line.startswith(b"data: {") and json.loads(line[6:]).get("usage"):
                        usage = True
                if not (done and usage):
                    raise RuntimeError("stream ended without usage and [DONE]")
            latencies.append(time.monotonic() - started)
        except Exception as e:  # every failure is counted and a few are shown
            errors.append(f"{type(e).__name__}: {e}"[:300])


def run(endpoint: str, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    until = time.monotonic() + seconds
    started = time.monotonic()
    threads = [threading.Thread(target=_client, args=(endpoint + "/v1/completions", until, latencies, errors),
                                daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3) if ordered else float("nan")

    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(latencies), "errors": len(errors),
            "requestsPerSecond": round(len(latencies) / elapsed, 1), "p50": pct(0.50), "p99": pct(0.99),
            "mean": round(statistics.fmean(latencies), 3) if latencies else float("nan"),
            "firstErrors": errors[:5]}


def describe(r: dict) -> str:
    return (f"load: {r['clients']} streaming clients for {r['seconds']} s: {r['requests']} requests, "
            f"{r['errors']} errors, {r['requestsPerSecond']} req/s, latency p50 {r['p50']} s, p99 {r['p99']} s")
