"""Faults during `pulumi up` and `pulumi destroy` (issue 5): each fails naming the host and the cause,
keeps what was done in state, and the next run converges without touching what was already fine.

One stack (the small 2P2D topology on host1..host7) lives through the module; the tests run in file
order and each leaves it deployed and healthy for the next.
"""
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from testbed.layout import HOSTS_DIR

from . import load, stacks
from .conftest import ROOT, complete, containers, ssh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STACK = "faults"
HOSTS = [f"host{i}" for i in range(1, 8)]


@contextlib.contextmanager
def broken(host: str, service: str):
    """The host's sshd or dockerd is stopped for the duration, then started again."""
    subprocess.run([sys.executable, "-m", "testbed", "stop", host, service], cwd=ROOT, check=True,
                   capture_output=True, timeout=180)
    try:
        yield
    finally:
        subprocess.run([sys.executable, "-m", "testbed", "start", host], cwd=ROOT, check=True, capture_output=True,
                       timeout=180)


@pytest.fixture(scope="module")
def cluster(testbed_hosts, tmp_path_factory):
    from .conftest import Pulumi
    tmp = tmp_path_factory.mktemp("faults")
    pulumi = Pulumi(ROOT, tmp / "state")
    for name in HOSTS:
        ssh(testbed_hosts[name], "docker rm -f $(docker ps -aq) >/dev/null 2>&1; true")
    pulumi("stack", "init", STACK)
    state = {"config": stacks.small_topology(), "tmp": tmp, "deployed": False}
    state["path"] = stacks.write(tmp / "stack.yaml", state["config"])
    yield pulumi, state, testbed_hosts
    for name in HOSTS:
        subprocess.run([sys.executable, "-m", "testbed", "start", name], cwd=ROOT, capture_output=True, timeout=180)
        ssh(testbed_hosts[name], "mountpoint -q /tmp/scripts_path && umount /tmp/scripts_path; true", check=False)
    pulumi("destroy", "--yes", "--skip-preview", "--config-file", state["path"], check=False, timeout=600)
    pulumi("stack", "rm", "--yes", "--force", STACK, check=False)  # also removes Pulumi.faults.yaml


def configure(state, config: dict) -> str:
    state["config"] = config
    state["path"] = stacks.write(state["tmp"] / "stack.yaml", config)
    return state["path"]


def in_state(pulumi) -> set[str]:
    """Names of the command resources the stack's state records."""
    export = json.loads(pulumi("stack", "export").stdout)
    return {r["urn"].rsplit("::", 1)[-1] for r in export["deployment"].get("resources", [])
            if r["type"] == "command:remote:Command"}


def assert_no_changes(pulumi, path):
    again = pulumi("preview", "--diff", "--config-file", path).stdout
    assert not any(w in again for w in ("to create", "to update", "to replace", "to delete")), again


def sshd_connections(testbed_hosts) -> int:
    """Connections every host's sshd has logged (LogLevel VERBOSE logs each one)."""
    total = 0
    for h in testbed_hosts.values():
        log = HOSTS_DIR / h["name"] / "sshd.log"
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                total += sum(1 for line in f if "Connection from" in line)
    return total


def test_bad_config_and_a_missing_image_fail_before_any_ssh_connection(cluster):
    pulumi, state, testbed_hosts = cluster
    ssh(testbed_hosts["host1"], "true")
    before = sshd_connections(testbed_hosts)
    assert before > 0  # the count sees connections (the one just made)
    # key -> (the break, the words the error must say after "invalid stack config")
    cases = {
        "pdstack:image": (lambda c: c.update({"pdstack:image": stacks.IMAGE.rsplit(":", 1)[0] + ":no-such-tag"}),
                          "pdstack:image: 10.77.0.1:5000 has no pdstack/simulator:no-such-tag (HTTP 404)"),
        "pdstack:decode[1].tensorParallel": (
            lambda c: c["pdstack:decode"][1].update(devices="0-5", tensorParallel=4), "pdstack:decode[1].tensorParallel"),
        "pdstack:proxy.host": (lambda c: c["pdstack:proxy"].update(host="host99"), "pdstack:proxy.host"),
    }
    for key, (mutate, says) in cases.items():
        config = copy.deepcopy(state["config"])
        mutate(config)
        path = stacks.write(state["tmp"] / "broken.yaml", config)
        up = pulumi("up", "--yes", "--skip-preview", "--config-file", path, check=False, timeout=300)
        out = up.stdout + up.stderr
        assert up.returncode != 0 and "invalid stack config" in out and says in out, (key, out[-3000:])
        assert "Traceback" not in out
    assert sshd_connections(testbed_hosts) == before  # nothing remote happened
    assert in_state(pulumi) == set()


def test_an_unreachable_proxy_host_keeps_the_engines_and_the_next_up_only_adds_the_proxy(cluster):
    pulumi, state, testbed_hosts = cluster
    with broken("host7", "sshd"):
        # --continue-on-error: whatever does not need the broken host is done (without it, Pulumi stops
        # starting new work at the first error).
        up = pulumi("up", "--yes", "--skip-preview", "--continue-on-error", "--config-file", state["path"],
                    check=False, timeout=900)
    out = up.stdout + up.stderr
    assert up.returncode != 0
    assert "proxy-host7" in out and "10.77.0.17" in out and "connection refused" in out.lower(), out[-4000:]
    # Every engine host's resources were created and recorded; only the proxy's are missing.
    recorded = in_state(pulumi)
    for name in ("prefill-a-host1", "prefill-a-host2", "prefill-b-host3", "decode-a-host4", "decode-a-host5",
                 "decode-b-host6"):
        assert {f"{name}-files", f"{name}-container", f"{name}-ready"} <= recorded, (name, sorted(recorded))
    assert not any(r.startswith("proxy-host7-") and r.endswith(("-container", "-ready")) for r in recorded)
    engines = containers(testbed_hosts, HOSTS[:6])
    assert len(engines) == 6 and all(v.endswith("running") for v in engines.values()), engines

    # The host is back: the next `up` creates the proxy and touches nothing else. Meanwhile, no process
    # on the machine (hosts included: they share its process table) shows the private key.
    key_body = [line for line in open(stacks.KEY).read().splitlines() if line and not line.startswith("-----")]
    seen_key, stop = [], threading.Event()

    def watch_ps():
        while not stop.is_set():
            args = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True).stdout
            seen_key.extend(line for line in key_body if line in args)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_ps, daemon=True)
    watcher.start()
    try:
        pulumi("up", "--yes", "--skip-preview", "--config-file", state["path"], timeout=900)
    finally:
        stop.set()
        watcher.join(10)
    assert seen_key == []
    assert containers(testbed_hosts, HOSTS[:6]) == engines
    assert complete(pulumi)["choices"][0]["text"]
    assert_no_changes(pulumi, state["path"])
    state["deployed"] = True


def test_sustained_load_through_the_proxy(cluster):
    """50 streaming clients for 60 s; the figures are printed, errors fail the test."""
    pulumi, state, _ = cluster
    assert state["deployed"]
    endpoint = json.loads(pulumi("stack", "output", "--json").stdout)["endpoint"]
    report = load.run(endpoint, clients=50, seconds=60)
    print("\n" + load.describe(report))
    assert report["requests"] > 0 and report["errors"] == 0, report


def test_an_engine_that_dies_after_start_is_reported_by_status_and_restored_by_its_repair(cluster):
    pulumi, state, testbed_hosts = cluster
    config = copy.deepcopy(state["config"])
    config["pdstack:decode"][1]["engine"] = {"env": {"PDSIM_FAIL_AFTER_REQUESTS": "2"}}
    path = configure(state, config)
    pulumi("up", "--yes", "--skip-preview", "--config-file", path, timeout=900)
    victim = "you_name_omni_infer_decode_host6"
    for _ in range(30):  # round robin: decode-b gets its share, and dies after its second request
        try:
            complete(pulumi)
        except ValueError:
            pass  # a request the dying engine took
        if "exited" in containers(testbed_hosts, ["host6"]).get(victim, ""):
            break
    assert containers(testbed_hosts, ["host6"])[victim].endswith("exited")

    status = subprocess.run([sys.executable, "-m", "pdstack", "status", "-s", STACK, "--config-file", path, "--json"],
                            cwd=ROOT, env=pulumi.env, capture_output=True, text=True, timeout=300)
    assert status.returncode == 1, status.stdout + status.stderr
    rows = [r for r in json.loads(status.stdout)["rows"] if not r["ok"]]
    assert {(r["host"], r["container"]) for r in rows} == {("host6", victim)}, rows
    argv = rows[0]["repairArgv"]
    assert argv[:2] == ["bin/pulumi", "up"] and argv[-1].endswith("::decode-b-host6-container"), argv
    pulumi(*argv[1:], "--yes", "--skip-preview", timeout=900)
    assert containers(testbed_hosts, ["host6"])[victim].endswith("running")
    again = subprocess.run([sys.executable, "-m", "pdstack", "status", "-s", STACK, "--config-file", path],
                           cwd=ROOT, env=pulumi.env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout

    # Back to an engine that does not die.
    path = configure(state, stacks.small_topology())
    pulumi("up", "--yes", "--skip-preview", "--config-file", path, timeout=900)


def test_docker_down_on_a_host_fails_naming_it_and_the_next_up_converges(cluster):
    pulumi, state, testbed_hosts = cluster
    config = copy.deepcopy(state["config"])
    config["pdstack:decode"][0]["engine"] = {"maxNumSeqs": 12}  # replaces decode-a: host4 and host5
    path = configure(state, config)
    with broken("host5", "dockerd"):
        up = pulumi("up", "--yes", "--skip-preview", "--config-file", path, check=False, timeout=900)
    out = up.stdout + up.stderr
    assert up.returncode != 0
    assert "pdstack: host host5: cannot use docker: Cannot connect to the Docker daemon" in out, out[-4000:]
    # Its container (stopped with dockerd) is still recorded: state never forgets a container that exists.
    assert "decode-a-host5-container" in in_state(pulumi)
    pulumi("up", "--yes", "--skip-preview", "--config-file", path, timeout=900)
    assert containers(testbed_hosts, ["host5"])["you_name_omni_infer_decode_host5"].endswith("running")
    assert complete(pulumi)["choices"][0]["text"]
    assert_no_changes(pulumi, path)


def test_an_unwritable_path_fails_naming_the_host_and_the_file(cluster):
    pulumi, state, testbed_hosts = cluster
    config = copy.deepcopy(state["config"])
    config["pdstack:prefill"][1]["engine"] = {"extraArgs": "--seed 3"}  # rewrites host3's launch script
    path = configure(state, config)
    ssh(testbed_hosts["host3"], "mount -t tmpfs -o ro tmpfs /tmp/scripts_path")
    try:
        up = pulumi("up", "--yes", "--skip-preview", "--config-file", path, check=False, timeout=900)
    finally:
        ssh(testbed_hosts["host3"], "umount /tmp/scripts_path")
    out = up.stdout + up.stderr
    assert up.returncode != 0
    assert "prefill-b-host3-files" in out and "10.77.0.13" in out and "Read-only file system" in out, out[-4000:]
    pulumi("up", "--yes", "--skip-preview", "--config-file", path, timeout=900)
    assert "--seed 3" in ssh(testbed_hosts["host3"], "cat /tmp/scripts_path/you_name_omni_infer_prefill_host3.sh").stdout
    assert_no_changes(pulumi, path)


def managed_containers(testbed_hosts) -> set[str]:
    names = set()
    for name in HOSTS:
        out = ssh(testbed_hosts[name], "docker ps -a --filter label=io.pdstack.managed=true --format '{{.Names}}'")
        names |= set(out.stdout.split())
    return names


def interrupted_up(pulumi, path: str, *, sigint: bool) -> None:
    """`up` killed mid-way: Ctrl-C then, 3 s later, SIGKILL of the whole process group if it still runs;
    or SIGKILL alone (a crash, a closed terminal)."""
    up = subprocess.Popen([str(ROOT / "bin/pulumi"), "--non-interactive", "up", "--yes", "--skip-preview",
                           "--config-file", path], cwd=ROOT, env=pulumi.env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    time.sleep(25)  # mid-way: some engines replaced, some waiting for readiness
    if sigint:
        os.killpg(up.pid, signal.SIGINT)  # Pulumi stops starting work and waits for what runs
        time.sleep(3)
    running = up.poll() is None
    if running:
        os.killpg(up.pid, signal.SIGKILL)
    up.wait(30)
    said = up.stdout.read()
    print(f"\ninterrupted up (SIGINT first: {sigint}; killed: {running}) said:\n{said[:1200]}\n...\n{said[-1200:]}")


def test_an_interrupted_up_converges_on_the_next_run(cluster):
    pulumi, state, testbed_hosts = cluster
    for sigint, max_model_len in ((True, 16384), (False, 24576)):
        config = copy.deepcopy(state["config"])
        for inst in config["pdstack:prefill"] + config["pdstack:decode"]:
            inst["engine"] = {"maxModelLen": max_model_len}  # every engine is replaced
        path = configure(state, config)
        interrupted_up(pulumi, path, sigint=sigint)

        # The README's recipe. A killed CLI leaves its lock ("the stack is currently locked"): `pulumi
        # cancel` removes it. It may leave pending creates: every pdstack create is idempotent (a
        # container create first removes one of the same name or slot), so they are created again, and
        # `refresh --clear-pending-creates` drops them from the state.
        nxt = pulumi("up", "--yes", "--skip-preview", "--config-file", path, check=False, timeout=900)
        if nxt.returncode != 0 and "locked" in nxt.stdout + nxt.stderr:
            pulumi("cancel", "--yes")
            nxt = pulumi("up", "--yes", "--skip-preview", "--config-file", path, check=False, timeout=900)
        print("\nnext up said:\n" + (nxt.stdout + nxt.stderr)[-1500:])
        assert nxt.returncode == 0
        pulumi("refresh", "--yes", "--skip-preview", "--clear-pending-creates", "--config-file", path, timeout=600)
        assert "pending operations" not in pulumi("preview", "--config-file", path).stdout
        assert complete(pulumi)["choices"][0]["text"]
        assert_no_changes(pulumi, path)
        # No container runs that the stack does not know: every pdstack container on the hosts is one of
        # the stack's, and every one of the stack's exists.
        expected = {c for cs in json.loads(pulumi("stack", "output", "--json").stdout)["containers"].values()
                    for c in cs}
        assert managed_containers(testbed_hosts) == expected


def test_destroy_with_a_host_down_removes_the_rest_and_a_later_destroy_finishes(cluster):
    pulumi, state, testbed_hosts = cluster
    with broken("host6", "sshd"):
        down = pulumi("destroy", "--yes", "--skip-preview", "--continue-on-error", "--config-file", state["path"],
                      check=False, timeout=900)
    out = down.stdout + down.stderr
    assert down.returncode != 0
    assert "decode-b-host6" in out and "10.77.0.16" in out, out[-4000:]
    # Left in state: host6's resources, and the device reads every global ranktable depends on (they
    # hold nothing on the hosts; they go once host6's ranktable is deleted).
    left = in_state(pulumi)
    assert "decode-b-host6-container" in left, left
    assert all(r.startswith(("decode-b-host6-", "host6-")) or r.endswith("-device-addresses") for r in left), left
    assert managed_containers(testbed_hosts) == {"you_name_omni_infer_decode_host6"}
    pulumi("destroy", "--yes", "--skip-preview", "--config-file", state["path"], timeout=900)
    assert in_state(pulumi) == set()
    assert managed_containers(testbed_hosts) == set()
