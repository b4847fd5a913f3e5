"""`ray` stand-in: just enough of Ray's node membership for a multi-node prefill.

Omni-Infer starts `ray start --head` on the prefill master and `ray start --address=HEAD:6379`
on the other prefill hosts; the master's vLLM (--distributed-executor-backend ray) then needs
every node present. Here the head is a daemon listening on HOST:PORT that keeps a list of
nodes, each worker is a daemon holding a heartbeat connection to it, and vLLM asks the head
for the node list. No tasks, actors or object store exist.

State (pid files, logs, the head's address) lives in $RAY_STANDIN_DIR (default
/tmp/ray-standin), one directory per host, like Ray's /tmp/ray.
"""

import argparse
import json
import os
import sys
import threading
import time
import uuid

from . import SIMULATOR_ID, daemon, jsonline, netaddr
from .log import Log

log = Log("ray_standin.py")
MARKER = "simulator.ray_standin"
DEFAULT_PORT = 6379
HEARTBEAT_SECONDS = 1.0
NODE_TIMEOUT_SECONDS = 10.0


def run_dir() -> str:
    return os.environ.get("RAY_STANDIN_DIR", "/tmp/ray-standin")


def _path(name: str) -> str:
    return os.path.join(run_dir(), name)


# ---------------------------------------------------------------- head daemon

class Head:
    def __init__(self, ip: str, port: int, num_gpus: float):
        self.nodes: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.server = jsonline.Server((ip, port), self._handle, self._closed)
        self.address = f"{ip}:{port}"
        self.nodes["head"] = {"node_id": _node_id(), "ip": ip, "num_gpus": num_gpus,
                              "is_head": True, "conn": None, "seen": None}

    def _handle(self, conn, msg: dict) -> dict:
        op = msg.get("op")
        with self._lock:
            if op == "join":
                ip = str(msg.get("node_ip"))
                # One raylet per host: a re-join from the same address replaces a stale entry.
                for key, n in list(self.nodes.items()):
                    if not n["is_head"] and n["ip"] == ip and n["conn"] is not conn:
                        del self.nodes[key]
                key = str(id(conn))
                self.nodes[key] = {"node_id": msg.get("node_id") or _node_id(), "ip": ip,
                                   "num_gpus": msg.get("num_gpus", 0), "is_head": False,
                                   "conn": conn, "seen": time.monotonic()}
                log.info(f"node {ip} joined ({len(self.nodes)} nodes)")
                return {"ok": True, "head": self.address}
            if op == "ping":
                n = self.nodes.get(str(id(conn)))
                if n is None:
                    return {"ok": False, "error": "not joined"}
                n["seen"] = time.monotonic()
                return {"ok": True}
            if op == "nodes":
                return {"ok": True, "head": self.address, "simulator": SIMULATOR_ID,
                        "nodes": [{k: v for k, v in n.items() if k not in ("conn", "seen")}
                                  for n in self.nodes.values()]}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _closed(self, conn) -> None:
        with self._lock:
            n = self.nodes.pop(str(id(conn)), None)
        if n:
            log.warning(f"node {n['ip']} left ({len(self.nodes)} nodes)")

    def reap_forever(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            now = time.monotonic()
            with self._lock:
                for key, n in list(self.nodes.items()):
                    if n["seen"] is not None and now - n["seen"] > NODE_TIMEOUT_SECONDS:
                        del self.nodes[key]
                        log.warning(f"node {n['ip']} missed heartbeats; marked dead")


def _node_id() -> str:
    return uuid.uuid4().hex[:24]


def head_main(ip: str, port: int, num_gpus: float) -> int:
    try:
        head = Head(ip, port, num_gpus)
    except OSError as e:
        msg = f"cannot start the Ray head on {ip}:{port}: {e}"
        log.error(msg)
        daemon.notify(False, msg)
        return 1
    daemon.write_pid(_path("head.pid"))
    with open(_path("head.json"), "w") as f:
        json.dump({"address": head.address, "pid": os.getpid()}, f)
    head.server.start_background("ray-head")
    log.info(f"Ray head (simulated) listening on {head.address}")
    daemon.notify(True, head.address)
    head.reap_forever()
    return 0


# -------------------------------------------------------------- worker daemon

def worker_main(head: str, node_ip: str | None, num_gpus: float) -> int:
    host, port = netaddr.split_hostport(head, DEFAULT_PORT)
    if node_ip and not netaddr.is_local(node_ip):
        msg = f"--node-ip-address {node_ip} is not an address of this host"
        log.error(msg)
        daemon.notify(False, msg)
        return 1
    daemon.write_pid(_path("worker.pid"))
    with open(_path("worker.json"), "w") as f:
        json.dump({"head": f"{host}:{port}", "pid": os.getpid()}, f)
    node_id = _node_id()
    attempt = 0
    while True:
        attempt += 1
        try:
            sock = jsonline.connect(netaddr.resolve(host), port, timeout=3.0, source=node_ip)
        except OSError as e:
            reason = getattr(e, "strerror", None) or str(e)
            if attempt == 1 or attempt % 30 == 0:
                log.warning(f"cannot reach the Ray head at {host}:{port}: {reason}; retrying")
            time.sleep(1.0)
            continue
        my_ip = node_ip or sock.getsockname()[0]
        try:
            rfile = sock.makefile("rb")
            jsonline.send(sock, {"op": "join", "node_ip": my_ip, "node_id": node_id,
                                 "num_gpus": num_gpus})
            reply = jsonline.recv(rfile)
            if not reply or not reply.get("ok"):
                raise OSError(f"head refused the node: {reply}")
            log.info(f"joined the Ray head at {host}:{port} as node {my_ip}")
            daemon.notify(True, f"joined {host}:{port} as {my_ip}")
            attempt = 0
            while True:
                time.sleep(HEARTBEAT_SECONDS)
                jsonline.send(sock, {"op": "ping"})
                if not (jsonline.recv(rfile) or {}).get("ok"):
                    raise OSError("head stopped answering heartbeats")
        except (OSError, jsonline.ProtocolError) as e:
            log.warning(f"lost the Ray head at {host}:{port}: {e}; reconnecting")
        finally:
            sock.close()
        time.sleep(1.0)


# ----------------------------------------------------------------- client side

def head_candidates(host_ip: str | None = None) -> list[str]:
    """Where to look for the head: RAY_ADDRESS, the head this host runs or joined, then
    :6379 on loopback and on host_ip (Ray's `address="auto"` search, simplified)."""
    out = []
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto":
        out.append(env.removeprefix("ray://"))
    for name, key in (("head.json", "address"), ("worker.json", "head")):
        try:
            with open(_path(name)) as f:
                out.append(json.load(f)[key])
        except (OSError, ValueError, KeyError):
            pass
    out.append(f"127.0.0.1:{DEFAULT_PORT}")
    if host_ip:
        out.append(f"{host_ip}:{DEFAULT_PORT}")
    return list(dict.fromkeys(out))


def cluster_nodes(address: str, timeout: float = 3.0) -> list[dict]:
    host, port = netaddr.split_hostport(address, DEFAULT_PORT)
    reply = jsonline.call(netaddr.resolve(host), port, {"op": "nodes"}, timeout=timeout)
    if not reply.get("ok"):
        raise OSError(reply.get("error"))
    return reply["nodes"]


# ------------------------------------------------------------------------ CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray", description=(
        f"Ray stand-in ({SIMULATOR_ID}): node membership only, no tasks or actors."))
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a head or worker daemon on this host")
    s.add_argument("--head", action="store_true")
    s.add_argument("--address", help="HEAD_IP:PORT to join as a worker")
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--num-gpus", type=float, default=0)
    s.add_argument("--num-cpus", type=float)
    s.add_argument("--resources")
    s.add_argument("--node-ip-address")
    s.add_argument("--block", action="store_true", help="stay in the foreground")
    s.add_argument("--disable-usage-stats", action="store_true")
    s.add_argument("--include-dashboard")
    s.add_argument("--dashboard-host")
    s.add_argument("--dashboard-port", type=int)
    t = sub.add_parser("stop", help="stop the daemons started on this host")
    t.add_argument("-f", "--force", action="store_true")
    t.add_argument("-g", "--grace-period", type=float, default=16)
    st = sub.add_parser("status", help="print the nodes of the cluster")
    st.add_argument("--address")
    d = sub.add_parser("_daemon", help=argparse.SUPPRESS)
    d.add_argument("kind", choices=["head", "worker"])
    d.add_argument("--ip")
    d.add_argument("--port", type=int)
    d.add_argument("--head-address")
    d.add_argument("--num-gpus", type=float, default=0)
    return p


def _start(a) -> int:
    if bool(a.head) == bool(a.address):
        print("ray start: give exactly one of --head or --address", file=sys.stderr)
        return 2
    os.makedirs(run_dir(), exist_ok=True)
    kind = "head" if a.head else "worker"
    running = daemon.alive_from_pidfile(_path(f"{kind}.pid"), MARKER)
    if running:
        print(f"ray start: a Ray {kind} is already running on this node (pid {running}); "
              "run `ray stop` first", file=sys.stderr)
        return 1
    if a.head:
        ip = a.node_ip_address or netaddr.host_address()
        args = ["_daemon", "head", "--ip", ip, "--port", str(a.port),
                "--num-gpus", str(a.num_gpus)]
    else:
        args = ["_daemon", "worker", "--head-address", a.address, "--num-gpus", str(a.num_gpus)]
        if a.node_ip_address:
            args += ["--ip", a.node_ip_address]
    if a.block:
        return _daemon(_parser().parse_args(args))
    wait = float(os.environ.get("RAY_STANDIN_START_WAIT", "5"))
    ok, msg, pid = daemon.spawn(daemon.python_argv("simulator.ray_standin", args),
                                _path(f"{kind}.log"), wait=wait)
    if not ok:
        print(f"ray start: the Ray {kind} failed to start: {msg}", file=sys.stderr)
        return 1
    print(f"Local node IP: {a.node_ip_address or netaddr.host_address()}")
    print(f"({SIMULATOR_ID}: Ray stand-in, pid {pid}, logs in {run_dir()})")
    if a.head:
        print("Ray runtime started.")
        print("To add another node to this Ray cluster, run")
        print(f"  ray start --address='{msg}'")
    elif msg.startswith("joined"):
        print("Ray runtime started.")
    else:
        print(f"Ray worker started, but it has not joined yet ({msg or 'still connecting'}); "
              "it keeps retrying in the background. `ray status` shows when it joins.")
    return 0


def _stop(a) -> int:
    stopped = 0
    for kind in ("worker", "head"):
        path = _path(f"{kind}.pid")
        pid = daemon.alive_from_pidfile(path, MARKER)
        if pid and daemon.stop(pid, force=a.force, wait=a.grace_period):
            stopped += 1
        for p in (path, _path(f"{kind}.json")):
            try:
                os.unlink(p)
            except OSError:
                pass
    print(f"Stopped all {stopped} Ray processes." if stopped
          else "Did not find any active Ray processes.")
    return 0


def _status(a) -> int:
    cands = [a.address] if a.address else head_candidates()
    errors = []
    for addr in cands:
        try:
            nodes = cluster_nodes(addr)
        except (OSError, ValueError, jsonline.ProtocolError) as e:
            errors.append(f"{addr}: {getattr(e, 'strerror', None) or e}")
            continue
        print(f"======== Cluster status ({SIMULATOR_ID} Ray stand-in) ========")
        print(f"Head: {addr}")
        print("Node status\n" + "-" * 63 + "\nActive:")
        for n in nodes:
            role = " (head)" if n["is_head"] else ""
            print(f" 1 node_{n['node_id']} {n['ip']}{role} GPU: {float(n['num_gpus']):g}")
        gpus = sum(float(n["num_gpus"]) for n in nodes)
        print("Pending:\n (no pending nodes)\n\nResources\n" + "-" * 63)
        print(f"Usage:\n 0.0/{gpus:.1f} GPU\n 0.0/{len(nodes)}.0 node")
        return 0
    print("ray status: could not find any running Ray instance: " + "; ".join(errors),
          file=sys.stderr)
    return 1


def _daemon(a) -> int:
    if a.kind == "head":
        return head_main(a.ip, a.port, a.num_gpus)
    return worker_main(a.head_address, a.ip, a.num_gpus)


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    return {"start": _start, "stop": _stop, "status": _status, "_daemon": _daemon}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
