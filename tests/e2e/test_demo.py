"""`make demo`'s deployment step on the testbed: simulated prefill, decode and proxy in containers
pulled from the testbed registry, and the seed request streamed through the proxy."""
import json
import subprocess

import pytest

from .conftest import ROOT, ssh

pytestmark = pytest.mark.e2e


def test_demo_streams_a_completion_through_the_proxy(testbed_hosts):
    run = subprocess.run(["bash", str(ROOT / "scripts/demo.sh")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    events = [line[len("data: "):] for line in run.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert len(text.split()) >= 3
    final = chunks[-1]
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == sum(1 for c in chunks if c["choices"])
    assert all("usage" in c for c in chunks)  # continuous_usage_stats
    assert all(c["simulator"].startswith("pdstack-simulator") for c in chunks)
    # The containers really run on the hosts the demo names, under their own dockerd.
    for name, ctr in [("host1", "pdstack_demo_prefill_host1"), ("host2", "pdstack_demo_decode_host2"),
                      ("host3", "pdstack_demo_proxy_host3")]:
        assert ssh(testbed_hosts[name], f"docker inspect -f '{{{{.State.Running}}}}' {ctr}").stdout.strip() == "true"
    # Deterministic at temperature 0: a second run gives the same text.
    again = subprocess.run(["bash", str(ROOT / "scripts/demo.sh")], capture_output=True, text=True, timeout=300)
    again_text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in again.stdout.splitlines()
                         if line.startswith("data: {") and json.loads(line[6:])["choices"])
    assert again_text == text
