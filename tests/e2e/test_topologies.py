"""Other layouts than the dev stack, and failures at readiness that must name the host, not hang."""
import json
import re
import subprocess
import time

import pytest

from . import stacks
from .conftest import ROOT, complete, ssh

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(testbed_hosts, pulumi_cli, tmp_path):
    pulumi = pulumi_cli(ROOT)
    for h in testbed_hosts.values():
        ssh(h, "docker rm -f $(docker ps -aq) >/dev/null 2>&1; true")
    pulumi("stack", "init", "topology")
    yield pulumi
    pulumi("destroy", "--yes", "--skip-preview", "--config-file", str(tmp_path / "stack.yaml"), check=False, timeout=600)
    pulumi("stack", "rm", "--yes", "--force", "topology", check=False)  # also removes the Pulumi.topology.yaml init wrote


def metric(url: str, name: str) -> float:
    text = subprocess.run(["curl", "-s", "--noproxy", "*", "--max-time", "5", url + "/metrics"],
                          capture_output=True, text=True).stdout
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_two_prefill_and_two_decode_instances_all_serve(stack, tmp_path):
    config = stacks.write(tmp_path / "stack.yaml", stacks.small_topology())
    stack("up", "--yes", "--skip-preview", "--config-file", config, timeout=900)
    outputs = json.loads(stack("stack", "output", "--json").stdout)
    assert sorted(outputs["prefillEndpoints"]) == ["prefill-a", "prefill-b"]
    assert len(outputs["decodeEndpoints"]["decode-a"]) == 8  # 2 hosts x 4 devices, TP 1
    assert len(outputs["decodeEndpoints"]["decode-b"]) == 2  # 4 devices, TP 2

    for i in range(12):
        answer = complete(outputs["endpoint"], f"request {i}")
        assert answer["choices"][0]["text"], answer

    for name, url in outputs["prefillEndpoints"].items():
        assert metric(url, "vllm:request_success_total") > 0, f"prefill instance {name} served nothing"
    for name, urls in outputs["decodeEndpoints"].items():
        assert sum(metric(u, "vllm:request_success_total") for u in urls) > 0, f"decode instance {name} served nothing"
        assert sum(metric(u, "pdsim:kv_transfer_tokens_total") for u in urls) > 0, f"decode {name} got no KV"

    preview = stack("preview", "--diff", "--config-file", config)
    assert not any(w in preview.stdout for w in ("to create", "to update", "to replace", "to delete")), preview.stdout


def test_a_port_held_by_a_stale_process_fails_at_readiness_naming_the_host(stack, tmp_path, testbed_hosts):
    # A leftover process on the prefill master's API port: the reference would silently move to the
    # next port (gotcha 9.7); pdstack's engine cannot bind, and `up` must say where and why.
    holder = subprocess.Popen(["python3", "-m", "testbed", "exec", "host3", "--",
                               "python3", "-c", "import socket,time; s=socket.socket(); "
                               "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                               "s.bind(('0.0.0.0', 9001)); s.listen(); time.sleep(600)"], cwd=ROOT)
    try:
        time.sleep(1)
        config = stacks.write(tmp_path / "stack.yaml", stacks.small_topology())
        started = time.monotonic()
        up = stack("up", "--yes", "--skip-preview", "--config-file", config, check=False, timeout=900)
        assert up.returncode != 0
        assert time.monotonic() - started < 400
        out = up.stdout + up.stderr
        assert "host host3" in out and "you_name_omni_infer_prefill_host3" in out, out[-4000:]
        assert "last log lines" in out
        # The proxy was not started: it only starts once every instance is ready.
        assert ssh(testbed_hosts["host7"], "docker ps -aq").stdout.strip() == ""
    finally:
        holder.kill()
        holder.wait()


def test_an_engine_that_fails_at_start_shows_its_log(stack, tmp_path):
    config = stacks.small_topology()
    config["pdstack:decode"][1]["engine"] = {"env": {"PDSIM_FAIL_AT_START": "1"}}
    path = stacks.write(tmp_path / "stack.yaml", config)
    up = stack("up", "--yes", "--skip-preview", "--config-file", path, check=False, timeout=900)
    assert up.returncode != 0
    out = up.stdout + up.stderr
    assert re.search(r"host host6: container you_name_omni_infer_decode_host6 is (exited|dead)", out), out[-4000:]
    assert "PDSIM_FAIL_AT_START" in out  # the engine's own last words, from `docker logs`


def test_an_unreachable_host_fails_naming_it_within_the_dial_limit(stack, tmp_path):
    config = stacks.small_topology()
    config["pdstack:hosts"]["host3"] = {"address": "10.77.0.99"}  # on the testbed subnet, nobody there
    path = stacks.write(tmp_path / "stack.yaml", config)
    started = time.monotonic()
    up = stack("up", "--yes", "--skip-preview", "--config-file", path, check=False, timeout=900)
    assert up.returncode != 0
    assert time.monotonic() - started < 300  # 4 dials of at most 15 s each, not a hang
    out = up.stdout + up.stderr
    # The machine's device read (named by address) and the host's image pull both say where.
    assert "10.77.0.99-device-addresses" in out and "prefill-b-host3-image" in out, out[-4000:]


def test_a_host_key_that_does_not_match_fails_up_naming_the_host(stack, tmp_path, testbed_hosts):
    # A known_hosts file where host3 carries host4's key, as after a reinstall or an impostor.
    known = tmp_path / "known_hosts"
    known.write_text("".join(
        f"{h['address']} {testbed_hosts['host4' if name == 'host3' else name]['hostPublicKey']}\n"
        for name, h in testbed_hosts.items()))
    config = stacks.small_topology()
    config["pdstack:ssh"]["knownHostsFile"] = str(known)
    path = stacks.write(tmp_path / "stack.yaml", config)
    preview = stack("preview", "--config-file", path)
    assert "host keys are not verified" not in preview.stdout + preview.stderr  # every host is pinned
    up = stack("up", "--yes", "--skip-preview", "--config-file", path, check=False, timeout=900)
    assert up.returncode != 0
    out = up.stdout + up.stderr
    # The first to fail is the machine's device read, named by its address.
    assert "10.77.0.13-device-addresses" in out and "host key" in out.lower(), out[-4000:]
    # Nothing was started on the impostor.
    assert ssh(testbed_hosts["host3"], "docker ps -aq").stdout.strip() == ""
