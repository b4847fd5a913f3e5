"""Helpers for the simulator tests (fixtures are in conftest.py).

Every simulated host gets its own loopback address (the whole 127/8 is local), every server a
free port on it, and every process is started here and stopped by pid at teardown. Nothing
leaves the machine.
"""

import http.client
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "simulator"
if str(REPO) not in sys.path:  # tests import simulator.* for its pure functions
    sys.path.insert(0, str(REPO))

_octets = itertools.count()
_base = random.Random(os.getpid()).randrange(64, 250)


def new_host() -> str:
    """A fresh 127.x.y.z address standing for one host."""
    n = next(_octets)
    return f"127.{_base}.{n // 250}.{n % 250 + 2}"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def sim_env(**extra) -> dict:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("PDSIM_", "VLLM_", "RAY_")) or k in (
                "RANK_TABLE_FILE_PATH", "GLOBAL_RANK_TABLE_FILE_PATH", "ASCEND_RT_VISIBLE_DEVICES",
                "NNODES", "ROLE"):
            del env[k]
    # The wiring tests read /health's reasons while an engine starts: the simulator's diagnostic mode.
    # test_engine.py checks the default (connections refused until ready) on its own.
    env.update(PYTHONPATH=str(REPO), PDSIM_STARTUP_DELAY="0", PDSIM_TOKEN_DELAY="0.002",
               PYTHONUNBUFFERED="1", RAY_STANDIN_START_WAIT="1", PDSIM_HEALTH_DURING_STARTUP="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def request(method: str, host: str, port: int, path: str, body=None, headers=None,
         timeout: float = 10.0):
    """(status, headers dict, body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(host, port, path, timeout=10.0):
    status, _, body = request("GET", host, port, path, timeout=timeout)
    return status, json.loads(body)


def post_json(host, port, path, body, headers=None, timeout=30.0):
    status, hdrs, data = request("POST", host, port, path, body, headers, timeout)
    return status, hdrs, json.loads(data)


def sse_events(data: bytes) -> list:
    out = []
    for block in data.decode().split("\n\n"):
        block = block.strip()
        if block.startswith("data: "):
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


class Proc:
    def __init__(self, popen: subprocess.Popen, log: Path, name: str):
        self.p, self.log, self.name = popen, log, name

    @property
    def pid(self):
        return self.p.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        return self.p.wait(timeout=timeout)

    def poll(self):
        return self.p.poll()


class Procs:
    """Starts processes and ends each by its pid at teardown."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.pidfiles: list[Path] = []
        self._n = itertools.count()

    def start(self, args: list[str], env: dict, name: str = "proc") -> Proc:
        log = self.tmp / f"{next(self._n):02d}-{name}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env,
                                 stdin=subprocess.DEVNULL, cwd=self.tmp)
        proc = Proc(p, log, name)
        self.procs.append(proc)
        return proc

    def vllm(self, model: str, *flags, env: dict, name: str = "vllm") -> Proc:
        return self.start([sys.executable, "-m", "simulator.cli_vllm", "serve", model, *flags],
                          env, name)

    def run(self, args: list[str], env: dict, timeout: float = 20.0) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=self.tmp)

    def watch_pidfiles(self, directory: Path) -> None:
        """Daemons (Ray, proxy) detach; their pid files are how teardown finds them."""
        self.pidfiles.append(directory)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.p.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.p.kill()
                proc.p.wait(timeout=5)
        for d in self.pidfiles:
            for f in Path(d).glob("*.pid"):
                try:
                    pid = int(f.read_text().strip())
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except (OSError, ValueError):
                    continue
                if b"simulator." in cmd:
                    os.kill(pid, signal.SIGKILL)


def wait_health(host: str, port: int, timeout: float = 15.0, proc: Proc | None = None) -> dict:
    """Poll /health until 200; fails with the last reason (and the process log) on timeout."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{proc.name} exited with {proc.poll()}:\n{proc.output()}")
        try:
            status, body = get_json(host, port, "/health", timeout=2)
            if status == 200:
                return body
            last = body
        except (OSError, ValueError) as e:
            last = repr(e)
        time.sleep(0.05)
    pytest.fail(f"{host}:{port} not healthy after {timeout}s: {last}\n"
                + (proc.output() if proc else ""))


def wait_http(host: str, port: int, timeout: float = 10.0, proc: Proc | None = None) -> None:
    """Until the port answers HTTP at all (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{proc.name} exited with {proc.poll()}:\n{proc.output()}")
        try:
            request("GET", host, port, "/health", timeout=2)
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{host}:{port} never answered")


def kv_config(role: str, engine_id: int) -> str:
    return json.dumps({"kv_connector": "AscendHcclConnectorV1", "kv_buffer_device": "npu",
                       "kv_role": role, "kv_rank": engine_id, "engine_id": engine_id,
                       "kv_parallel_size": 2})


def write_local_ranktable(path: Path, servers: list[tuple[str, list[int]]]) -> str:
    rank = 0
    server_list = []
    for ip, devices in servers:
        devs = []
        for d in devices:
            devs.append({"device_id": str(d), "device_ip": f"10.250.0.{d + 1}",
                         "rank_id": str(rank)})
            rank += 1
        server_list.append({"server_id": ip, "server_ip": ip, "device": devs})
    path.write_text(json.dumps({"version": "1.0", "status": "completed", "group_id": "0",
                                "server_count": str(len(servers)), "server_list": server_list}))
    return str(path)


def write_global_ranktable(path: Path, groups: list[list[str]]) -> str:
    path.write_text(json.dumps({
        "version": "1.0", "status": "completed",
        "server_group_list": [
            {"group_id": str(i), "server_count": str(len(ips)),
             "server_list": [{"server_id": ip, "server_ip": ip, "device": []} for ip in ips]}
            for i, ips in enumerate(groups)]}))
    return str(path)
