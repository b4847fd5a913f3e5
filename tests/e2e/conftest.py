"""Shared pieces of the end-to-end tests: the testbed hosts and a Pulumi CLI bound to a scratch backend."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def testbed_hosts():
    """A 9-host testbed (the dev stack's size) with the simulator image in its registry."""
    from testbed import cluster
    state = cluster.load_state()
    if state["hosts"] and state["devices"] != 16:
        subprocess.run([sys.executable, "-m", "testbed", "down"], check=True)
    subprocess.run([sys.executable, "-m", "testbed", "up", "--hosts", "9", "--devices", "16"], check=True)
    subprocess.run(["bash", str(ROOT / "scripts/push-simulator-image.sh")], check=True)
    hosts = json.loads(subprocess.run([sys.executable, "-m", "testbed", "hosts", "--json"],
                                      check=True, capture_output=True, text=True).stdout)
    return {h["name"]: h for h in hosts}


class Pulumi:
    def __init__(self, workdir: Path, state: Path):
        self.workdir = workdir
        self.env = dict(os.environ, PULUMI_BACKEND_URL=f"file://{state}", PULUMI_CONFIG_PASSPHRASE="e2e-test")
        state.mkdir(parents=True, exist_ok=True)
        self.state = state

    def __call__(self, *args, check=True, timeout=600):
        proc = subprocess.run([str(ROOT / "bin/pulumi"), "--non-interactive", *args], cwd=self.workdir,
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"pulumi {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture
def pulumi_cli(tmp_path):
    def make(workdir: Path) -> Pulumi:
        return Pulumi(workdir, tmp_path / "state")
    return make


def ssh(h, command, check=True):
    return subprocess.run(
        ["ssh", "-i", h["privateKeyPath"], "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=error", f"root@{h['address']}", command],
        capture_output=True, text=True, check=check, timeout=120)


def containers(testbed_hosts, hosts) -> dict[str, str]:
    """container name -> "<id> <start time> <status>", over the testbed hosts named in `hosts`: what a
    test compares to tell which containers a run replaced."""
    seen = {}
    for name in hosts:
        out = ssh(testbed_hosts[name], "for c in $(docker ps -aq); do docker inspect -f "
                                       "'{{.Name}} {{.Id}} {{.State.StartedAt}} {{.State.Status}}' $c; done").stdout
        for line in out.splitlines():
            cname, ident, started, status = line.split()
            seen[cname.lstrip("/")] = f"{ident} {started} {status}"
    return seen


def complete(target, prompt: str = "after a change") -> dict:
    """One completion through the proxy; `target` is its URL or a stack's Pulumi (its endpoint output)."""
    endpoint = target if isinstance(target, str) else json.loads(target("stack", "output", "--json").stdout)["endpoint"]
    body = json.dumps({"model": "deepseek", "temperature": 0, "max_tokens": 8, "prompt": prompt})
    out = subprocess.run(["curl", "-s", "--noproxy", "*", "--max-time", "30", "-X", "POST", endpoint + "/v1/completions",
                          "-H", "Content-Type: application/json", "-d", body], capture_output=True, text=True)
    return json.loads(out.stdout)
