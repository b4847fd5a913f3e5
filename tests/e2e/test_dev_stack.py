"""The dev stack on the 9-host testbed, as `make demo` deploys it: one prefill instance on 4 hosts (Ray),
one decode instance on 4 hosts (DP 64), the proxy on its own host."""
import json
import re
import subprocess

import pytest

from .conftest import ROOT, ssh

pytestmark = pytest.mark.e2e

SEED = {"model": "deepseek", "temperature": 0, "max_tokens": 50, "prompt": "how are you?", "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
PREFILL = ["host1", "host2", "host3", "host4"]
DECODE = ["host5", "host6", "host7", "host8"]


def completion_events(stdout: str) -> list:
    events = [line[len("data: "):] for line in stdout.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", stdout[-2000:]
    return [json.loads(e) for e in events[:-1]]


def pdstack_files(host) -> list[str]:
    out = ssh(host, "find /tmp/scripts_path /tmp/ranktable_save_path -type f 2>/dev/null; true").stdout
    return sorted(out.split())


def containers(host) -> list[str]:
    return sorted(ssh(host, "docker ps -a --format '{{.Names}}'").stdout.split())


def test_demo_deploys_the_dev_stack_and_streams_the_seed_request(testbed_hosts, pulumi_cli):
    pulumi = pulumi_cli(ROOT)
    pulumi.env["PULUMI_CONFIG_PASSPHRASE"] = "pdstack-dev"
    for h in testbed_hosts.values():  # containers of an earlier test or demo must not hold the ports
        ssh(h, "docker rm -f $(docker ps -aq) >/dev/null 2>&1; true")

    demo = subprocess.run(["bash", str(ROOT / "scripts/demo.sh")], env=pulumi.env, capture_output=True,
                          text=True, timeout=900)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    # The dev stack pins every host key (the testbed's known_hosts), so nothing warns about them.
    assert "host keys are not verified" not in demo.stdout + demo.stderr
    chunks = completion_events(demo.stdout)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert len(text.split()) >= 3
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert all("usage" in c for c in chunks)

    # Every role runs where the stack says, named <prefix>_<host>.
    for name in PREFILL:
        assert containers(testbed_hosts[name]) == [f"you_name_omni_infer_prefill_{name}"]
    for name in DECODE:
        assert containers(testbed_hosts[name]) == [f"you_name_omni_infer_decode_{name}"]
    assert containers(testbed_hosts["host9"]) == ["you_name_omni_infer_proxy_host9"]
    outputs = json.loads(pulumi("stack", "output", "--json").stdout)
    assert outputs["endpoint"] == "http://10.77.0.19:7000"
    assert len(outputs["decodeEndpoints"]["decode-0"]) == 64

    # Nothing changed, nothing to do.
    created = re.search(r"\+ (\d+) created", demo.stdout).group(1)
    preview = pulumi("preview", "--diff")
    assert f"{created} unchanged" in preview.stdout, preview.stdout[-3000:]
    assert not any(w in preview.stdout for w in ("to create", "to update", "to replace", "to delete"))

    # Destroy leaves no container and no file pdstack wrote (logs stay, as with the playbook).
    pulumi("destroy", "--yes", "--skip-preview")
    for name, h in testbed_hosts.items():
        assert containers(h) == [], name
        assert pdstack_files(h) == [], name

    # And a second `up` after it works.
    again = pulumi("up", "--yes", "--skip-preview", timeout=900)
    assert f"+ {created} created" in again.stdout
    out = subprocess.run(["curl", "-sN", "--noproxy", "*", "--max-time", "60", "-X", "POST",
                          outputs["endpoint"] + "/v1/completions", "-H", "Content-Type: application/json",
                          "-d", json.dumps(SEED)], capture_output=True, text=True)
    again_text = "".join(c["choices"][0]["text"] for c in completion_events(out.stdout) if c["choices"])
    assert again_text == text  # temperature 0 is deterministic
    pulumi("destroy", "--yes", "--skip-preview")
    pulumi("stack", "rm", "--yes", "--preserve-config", "dev")
