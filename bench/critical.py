"""The critical path: the remote work pdstack's `up` does, as a plain parallel-SSH script with no Pulumi.

Every command is the one pdstack's components run (rendered by pdstack.rendering from the same stack
config), over one OpenSSH connection per host (a ControlMaster), each host as early as its inputs allow:
image pulls and device-address reads start at once; a host's files (launch script, its ranktables, the
global ranktable) are written once every address is known; its container starts once its files and image
are there; the proxy starts once every prefill/decode host answers its health checks. That is also
pdstack's order on a first deploy (its rolling order applies only to instances that were serving).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pdstack import image_resolve
from pdstack.rendering import ranktable
from pdstack.rendering.plan import render

from . import pdcmds
from .common import cluster_spec, ssh, ssh_base


class Timeline:
    def __init__(self):
        self.t0 = time.monotonic()
        self.steps: list[tuple[str, str, float, float]] = []
        self._lock = threading.Lock()

    def run(self, host: str, step: str, fn):
        start = time.monotonic() - self.t0
        try:
            return fn()
        finally:
            with self._lock:
                self.steps.append((host, step, start, time.monotonic() - self.t0))


class Connections:
    """One SSH connection per host, shared by that host's commands, as a pooled deployer would."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pdbench-ssh-")
        self.open_hosts: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def path(self, addr: str) -> str:
        with self._lock:
            lock = self._locks.setdefault(addr, threading.Lock())
        with lock:
            if addr not in self.open_hosts:
                control = f"{self.dir}/{addr}"
                base = ssh_base(addr, control)
                subprocess.run(base[:-1] + ["-o", "ControlMaster=yes", "-o", "ControlPersist=600", "-f", "-N", base[-1]],
                               check=True, timeout=60)
                self.open_hosts[addr] = control
            return self.open_hosts[addr]

    def run(self, addr: str, command: str, stdin: str | None = None) -> str:
        return ssh(addr, command, stdin=stdin, control=self.path(addr))

    def close(self):
        for addr, control in self.open_hosts.items():
            subprocess.run(ssh_base(addr, control)[:-1] + ["-O", "exit", ssh_base(addr)[-1]], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def critical_path(config: dict) -> dict:
    spec = cluster_spec(config)
    deployment = render(spec)
    image, _ = image_resolve.resolve(spec.image)  # the digest-pinned reference pdstack deploys
    conns = Connections()
    tl = Timeline()
    plans = deployment.plans()
    pool = ThreadPoolExecutor(max_workers=4 * len(plans) + 8)
    try:
        def on(plan, step, command, stdin=None):
            return tl.run(plan.host.name, step, lambda: conns.run(plan.host.address, command, stdin))

        pulls = {p.host.name: pool.submit(on, p, "pull", pdcmds.pull_image(image, p.host.name)) for p in plans}
        reads = {name: pool.submit(tl.run, name, "devices", lambda h=host, d=devs: conns.run(
                     h.address, ranktable.read_devices_command(d)))
                 for name, (host, devs) in deployment.device_reads().items()}
        proxy = deployment.proxy
        proxy_files = pool.submit(on, proxy, "files", "bash -s", pdcmds.write_files(spec, proxy.files, f"{proxy.key}-files", proxy))

        addresses = {name: ranktable.parse_device_addresses(name, deployment.device_reads()[name][1], f.result())
                     for name, f in reads.items()}
        rts = ranktable.render_ranktables(spec, addresses)
        global_file = ranktable.render_global_ranktable(spec, addresses)

        def engine_host(plan):
            own = tuple(f for f in rts[plan.host.name] if f.path in plan.ranktable_paths)
            # pdstack writes these with two commands (-global-ranktable, -files); one round trip is the floor.
            on(plan, "files", "bash -s", pdcmds.write_files(spec, (global_file,), f"{plan.host.name}-global-ranktable")
               + pdcmds.write_files(spec, plan.files + own, f"{plan.key}-files", plan))
            pulls[plan.host.name].result()
            on(plan, "run", pdcmds.run_container(plan, image))
            on(plan, "ready", "bash -s", pdcmds.readiness(plan, spec.readiness.timeout_seconds,
                                                         spec.readiness.interval_seconds))

        ready = [pool.submit(engine_host, p) for _, group in deployment.prefill + deployment.decode for p in group]
        for f in ready:
            f.result()
        proxy_files.result()
        pulls[proxy.host.name].result()
        on(proxy, "proxy-run", pdcmds.run_container(proxy, image))
        on(proxy, "proxy-ready", "bash -s", pdcmds.readiness(proxy, spec.readiness.timeout_seconds,
                                                            spec.readiness.interval_seconds))
        wall = time.monotonic() - tl.t0
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        conns.close()
    return {"wall": wall, "connections": len(plans), "steps": tl.steps}


def read_addresses(config: dict) -> dict:
    spec = cluster_spec(config)
    return {h: ranktable.parse_device_addresses(h, devs, ssh(hh.address, ranktable.read_devices_command(devs)))
            for h, (hh, devs) in render(spec).device_reads().items()}


def one_host(config: dict, host: str, addresses: dict) -> dict:
    """What changing one host's container needs at least: new launch script (rewritten with its
    ranktables, as pdstack's -files does), old container out (pdstack's graceful stop), new container in,
    healthy again. The device addresses are read before the clock starts: pdstack has them in its state."""
    spec = cluster_spec(config)
    deployment = render(spec)
    image, _ = image_resolve.resolve(spec.image)
    plan = next(p for p in deployment.plans() if p.host.name == host)
    own = tuple(f for f in ranktable.render_ranktables(spec, addresses)[host] if f.path in plan.ranktable_paths)
    conns = Connections()
    tl = Timeline()
    try:
        def on(step, command, stdin=None):
            return tl.run(host, step, lambda: conns.run(plan.host.address, command, stdin))
        on("files", "bash -s", pdcmds.write_files(spec, plan.files + own, f"{plan.key}-files", plan))
        on("remove", pdcmds.remove_container(plan))
        on("run", pdcmds.run_container(plan, image))
        on("ready", "bash -s", pdcmds.readiness(plan, spec.readiness.timeout_seconds, spec.readiness.interval_seconds))
        wall = time.monotonic() - tl.t0
    finally:
        conns.close()
    return {"wall": wall, "connections": 1, "steps": tl.steps}


def main() -> None:
    from .common import stack_config
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, required=True)
    parser.add_argument("--one-host")
    args = parser.parse_args()
    config = stack_config(args.hosts)
    result = one_host(config, args.one_host, read_addresses(config)) if args.one_host else critical_path(config)
    print(json.dumps({"wall": result["wall"], "connections": result["connections"]}))


if __name__ == "__main__":
    main()
