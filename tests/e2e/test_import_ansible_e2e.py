"""Migration end to end: an Ansible inventory + server template whose hosts are testbed hosts, imported
with `python -m pdstack import-ansible`, deployed with `bin/pulumi up` and serving the seed request."""
import json
import subprocess
import sys

import pytest

from .conftest import ROOT, ssh

pytestmark = pytest.mark.e2e

STACK = "import-e2e"
FIXTURES = ROOT / "tests/fixtures/ansible"
INVENTORY = FIXTURES / "inventory_testbed_1P1D.yml"  # p0+p1 prefill (Ray), d0+d1 decode, c0 on p0's address
TEMPLATE = FIXTURES / "server_template_testbed.yml"
HOSTS = {"p0": "host1", "p1": "host2", "d0": "host3", "d1": "host4"}  # inventory host -> testbed host
SEED = {"model": "deepseek", "temperature": 0, "max_tokens": 50, "prompt": "how are you?", "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}}


@pytest.fixture
def stack(testbed_hosts, pulumi_cli, tmp_path):
    pulumi = pulumi_cli(ROOT)
    created = ROOT / f"Pulumi.{STACK}.yaml"  # `stack init` writes the stack's encryption salt there
    existed = created.exists()
    for h in testbed_hosts.values():  # containers of an earlier test or demo must not hold the ports
        ssh(h, "docker rm -f $(docker ps -aq) >/dev/null 2>&1; true")
    pulumi("stack", "init", STACK)
    yield pulumi
    pulumi("destroy", "--yes", "--skip-preview", "--config-file", str(tmp_path / f"Pulumi.{STACK}.yaml"), check=False,
           timeout=600)
    pulumi("stack", "rm", "--yes", "--force", "--preserve-config", STACK, check=False)
    if not existed:
        created.unlink(missing_ok=True)


def completion_events(stdout: str) -> list:
    events = [line[len("data: "):] for line in stdout.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", stdout[-2000:]
    return [json.loads(e) for e in events[:-1]]


def containers(host) -> list[str]:
    return sorted(ssh(host, "docker ps -a --format '{{.Names}}'").stdout.split())


def test_an_imported_inventory_deploys_and_serves_the_seed_request(stack, tmp_path, testbed_hosts):
    imported = subprocess.run([sys.executable, "-m", "pdstack", "import-ansible", str(INVENTORY), str(TEMPLATE),
                               "--stack", STACK, "--dir", str(tmp_path), "--readiness-timeout", "300"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "prefill-0: kv rank 0, master p0, hosts p0, p1, devices 0-3, TP 8" in imported.stdout
    assert "c0 shares p0's address 10.77.0.11" in imported.stdout
    config = str(tmp_path / f"Pulumi.{STACK}.yaml")

    stack("up", "--yes", "--skip-preview", "--config-file", config, timeout=900)
    outputs = json.loads(stack("stack", "output", "--json").stdout)
    assert outputs["endpoint"] == "http://10.77.0.11:7000"  # the proxy on p0, where c0 pointed
    assert outputs["prefillEndpoints"] == {"prefill-0": "http://10.77.0.11:9000"}
    assert outputs["decodeEndpoints"]["decode-0"] == [f"http://10.77.0.13:{9100 + r}" for r in range(4)] + [
        f"http://10.77.0.14:{9101 + r}" for r in range(4)]

    out = subprocess.run(["curl", "-sN", "--noproxy", "*", "--max-time", "60", "-X", "POST",
                          outputs["endpoint"] + "/v1/completions", "-H", "Content-Type: application/json",
                          "-d", json.dumps(SEED)], capture_output=True, text=True)
    chunks = completion_events(out.stdout)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert len(text.split()) >= 3, out.stdout[-2000:]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert all("usage" in c for c in chunks)

    # The reference's container names, on the machines the inventory named.
    assert containers(testbed_hosts["host1"]) == ["you_name_omni_infer_prefill_p0", "you_name_omni_infer_proxy_p0"]
    assert containers(testbed_hosts["host2"]) == ["you_name_omni_infer_prefill_p1"]
    assert containers(testbed_hosts["host3"]) == ["you_name_omni_infer_decode_d0"]
    assert containers(testbed_hosts["host4"]) == ["you_name_omni_infer_decode_d1"]

    stack("destroy", "--yes", "--skip-preview", "--config-file", config, timeout=600)
    for name in HOSTS.values():
        assert containers(testbed_hosts[name]) == [], name
