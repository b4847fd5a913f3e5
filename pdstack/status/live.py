"""`pdstack status`, the I/O part: ask Pulumi what the stack is, ask every host what it runs."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..config.known_hosts import pin_host_keys  # host keys from knownHostsFile, as the program pins them
from ..config.model import ClusterSpec, Host
from ..config.parse import ConfigError, check_local_files, parse_cluster
from ..rendering.plan import Deployment, render
from . import check

ROOT = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT = 10  # seconds to open an SSH connection
HOST_TIMEOUT = 120  # seconds for the whole probe of one host


class StackError(Exception):
    """The stack cannot be read (no such stack, never deployed, invalid config): a usage error."""


def _pulumi(args: list[str], pulumi: str) -> str:
    proc = subprocess.run([pulumi, "--non-interactive", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise StackError(f"`pulumi {' '.join(args)}` failed: " + ("; ".join(detail[-3:]) or f"exit {proc.returncode}"))
    return proc.stdout


@dataclass
class Stack:
    name: str
    spec: ClusterSpec
    deployment: Deployment
    outputs: dict
    image: str  # the `image` stack output: the reference the containers were started from
    urns: dict[str, str]  # resource name -> URN, for command:remote:Command resources in the state


def read_stack(name: str, config_file: str | None, pulumi: str) -> Stack:
    config_args = ["config", "--json", "--show-secrets", "-s", name]
    if config_file:
        config_args += ["--config-file", config_file]
    try:
        config = json.loads(_pulumi(config_args, pulumi))
        outputs = json.loads(_pulumi(["stack", "output", "--json", "--show-secrets", "-s", name], pulumi) or "{}")
        state = json.loads(_pulumi(["stack", "export", "-s", name], pulumi))
    except json.JSONDecodeError as err:
        raise StackError(f"unexpected output from pulumi: {err}") from None
    raw = {k: v.get("value") for k, v in config.items() if isinstance(v, dict)}
    try:
        spec = pin_host_keys(check_keys(parse_cluster(raw)))
    except ConfigError as err:
        raise StackError(f"invalid stack config:\n{err}") from None
    if not outputs.get("image"):
        raise StackError(f"stack {name} has no `image` output: it was never deployed (run `bin/pulumi up -s {name}`)")
    urns = {}
    for res in (state.get("deployment") or {}).get("resources") or []:
        if res.get("type") == "command:remote:Command":
            urns[res["urn"].rsplit("::", 1)[-1]] = res["urn"]
    return Stack(name, spec, render(spec), outputs, outputs["image"], urns)


def check_keys(spec: ClusterSpec) -> ClusterSpec:
    check_local_files(spec)
    return spec


def ssh_run(host: Host, script: str, timeout: int = HOST_TIMEOUT) -> tuple[int, str, str]:
    """Runs `bash -s` on the host with the script on stdin, with the system ssh client and the stack's
    key (a secret key goes to a 0600 temp file, deleted afterwards; never onto a command line)."""
    s = host.ssh
    with tempfile.TemporaryDirectory(prefix="pdstack-status-") as tmp:
        if s.private_key is not None:
            key = os.path.join(tmp, "key")
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(s.private_key if s.private_key.endswith("\n") else s.private_key + "\n")
        else:
            key = os.path.expanduser(s.private_key_path or "")
        opts = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
                "-o", "IdentitiesOnly=yes", "-o", "LogLevel=error", "-o", "ServerAliveInterval=10"]
        if s.host_key:
            known = os.path.join(tmp, "known_hosts")
            target = host.address if s.port == 22 else f"[{host.address}]:{s.port}"
            Path(known).write_text(f"{target} {s.host_key.strip()}\n")
            opts += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"]
        else:
            opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        argv = ["ssh", "-i", key, "-p", str(s.port), *opts, f"{s.user}@{host.address}", "bash -s"]
        try:
            proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 255, "", f"no answer within {timeout} s"
        return proc.returncode, proc.stdout, proc.stderr


def probe_host(host: Host, image: str, expected: list[check.Expected]) -> check.HostFacts:
    code, out, err = ssh_run(host, check.probe_script(image, expected))
    if code != 0:
        why = err.strip().splitlines()[-1] if err.strip() else f"exit {code}"
        return check.HostFacts(error=f"ssh {host.ssh.user}@{host.address}:{host.ssh.port} failed: {why}")
    return check.parse_probe(out)


def check_stack(stack: Stack) -> list[check.Row]:
    expected = check.expected_state(stack.deployment)
    hosts = {h.name: h for h in stack.spec.hosts}
    with ThreadPoolExecutor(max_workers=min(32, max(1, len(expected)))) as pool:
        futures = {name: pool.submit(probe_host, hosts[name], stack.image, exp) for name, exp in expected.items()}
    rows = check.outputs_rows(stack.deployment, stack.outputs)
    for name, exp in expected.items():
        rows += check.compare(exp, futures[name].result(), stack.image)
    return rows
