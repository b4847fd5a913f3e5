"""`pdstack status` on a deployed stack: drift made by hand is reported, and the printed command repairs it."""
import json
import subprocess
import sys
import time

import pytest

from pdstack.config.parse import parse_cluster
from pdstack.rendering.plan import render

from . import stacks
from .conftest import ROOT, ssh

pytestmark = pytest.mark.e2e

STACK = "status"
HOSTS = ("host1", "host2", "host3")
PREFILL, DECODE, PROXY = ("you_name_omni_infer_prefill_host1", "you_name_omni_infer_decode_host2",
                          "you_name_omni_infer_proxy_host3")


def small_config() -> dict:
    """1 prefill (host1), 1 decode (host2), the proxy (host3); two devices each to keep it light."""
    return stacks.small_topology(**{
        "pdstack:hosts": stacks.hosts(3),
        "pdstack:prefill": [{"name": "prefill-0", "hosts": ["host1"], "devices": "0-1"}],
        "pdstack:decode": [{"name": "decode-0", "hosts": ["host2"], "devices": "0-1"}],
        "pdstack:proxy": {"host": "host3", "port": 7000},
    })


@pytest.fixture
def deployed(testbed_hosts, pulumi_cli, tmp_path):
    pulumi = pulumi_cli(ROOT)
    for name in HOSTS:
        ssh(testbed_hosts[name], "docker rm -f $(docker ps -aq) >/dev/null 2>&1; true")
    config = stacks.write(tmp_path / "stack.yaml", small_config())
    pulumi("stack", "init", STACK)
    try:
        pulumi("up", "--yes", "--skip-preview", "--config-file", config, timeout=900)
        yield pulumi, config
    finally:
        pulumi("destroy", "--yes", "--skip-preview", "--config-file", config, check=False, timeout=600)
        pulumi("stack", "rm", "--yes", "--force", STACK, check=False)  # also removes Pulumi.status.yaml
        ssh(testbed_hosts["host2"], "docker rmi -f pdstack-drift:1 >/dev/null 2>&1; true", check=False)


def status(pulumi, config, *extra):
    return subprocess.run([sys.executable, "-m", "pdstack", "status", "-s", STACK, "--config-file", config, *extra],
                          cwd=ROOT, env=pulumi.env, capture_output=True, text=True, timeout=300)


def status_json(pulumi, config) -> tuple[int, dict]:
    proc = status(pulumi, config, "--json")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def differences(report) -> set:
    return {(r["host"], r["container"], r["check"]) for r in report["rows"] if not r["ok"]}


def repair(pulumi, row):
    argv = row["repairArgv"]
    assert argv[:2] == ["bin/pulumi", "up"], argv
    pulumi(*argv[1:], "--yes", "--skip-preview", timeout=900)


def assert_clean(pulumi, config):
    proc = status(pulumi, config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "everything matches" in proc.stdout


def test_drift_is_reported_and_the_printed_command_repairs_it(deployed, testbed_hosts):
    pulumi, config = deployed
    assert_clean(pulumi, config)
    every = status(pulumi, config, "--all")
    assert every.returncode == 0 and "health:9100" in every.stdout and "decode-servers" in every.stdout, every.stdout

    # 1. A container removed by hand: one row, and `pulumi up --replace <its -container URN>` repairs it.
    ssh(testbed_hosts["host2"], f"docker rm -f {DECODE}")
    table = status(pulumi, config)
    assert table.returncode == 1, table.stdout + table.stderr
    assert "--replace 'urn:pulumi:status::" in table.stdout and "decode-0-host2-container'" in table.stdout
    code, report = status_json(pulumi, config)
    assert code == 1 and differences(report) == {("host2", DECODE, "present")}
    row = report["rows"][0]
    assert row["repairArgv"][-2] == "--replace" and row["repairArgv"][-1].endswith("::decode-0-host2-container")
    repair(pulumi, row)
    assert_clean(pulumi, config)

    # 2. A container stopped by hand.
    ssh(testbed_hosts["host1"], f"docker stop -t 1 {PREFILL}")
    code, report = status_json(pulumi, config)
    assert code == 1 and differences(report) == {("host1", PREFILL, "running")}
    assert report["rows"][0]["found"] == "exited"
    assert report["rows"][0]["repairArgv"][-1].endswith("::prefill-0-host1-container")
    repair(pulumi, report["rows"][0])
    assert_clean(pulumi, config)

    # 3. The image replaced by hand: the same container, run from an image committed on the host.
    plan = next(p for p in render(parse_cluster(small_config())).plans() if p.container.name == DECODE)
    ssh(testbed_hosts["host2"], f"docker commit {DECODE} pdstack-drift:1 >/dev/null && docker rm -f {DECODE} >/dev/null"
                                f" && {plan.container.docker_run('pdstack-drift:1')}")
    deadline = time.monotonic() + 60
    while True:  # the engine in the new container takes a moment to answer /health
        code, report = status_json(pulumi, config)
        if differences(report) == {("host2", DECODE, "image")} or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert code == 1 and differences(report) == {("host2", DECODE, "image")}, report
    row = report["rows"][0]
    assert row["expected"] != row["found"]
    repair(pulumi, row)
    assert_clean(pulumi, config)

    # 4. The proxy's server list edited by hand: the repair rewrites the launch script (its -files
    # command is replaced delete-before-replace, so the new file survives) and restarts the proxy.
    script = f"/tmp/scripts_path/{PROXY}.sh"
    ssh(testbed_hosts["host3"], f"sed -i 's/10.77.0.12:9100,10.77.0.12:9101/10.77.0.12:9100/' {script}")
    code, report = status_json(pulumi, config)
    assert code == 1 and differences(report) == {("host3", PROXY, "decode-servers")}, report
    assert report["rows"][0]["found"] == "10.77.0.12:9100"
    assert [a.rsplit("::", 1)[-1] for a in report["rows"][0]["repairArgv"] if a.startswith("urn:")] == [
        "proxy-host3-files", "proxy-host3-container"]
    repair(pulumi, report["rows"][0])
    assert_clean(pulumi, config)
    assert "10.77.0.12:9100,10.77.0.12:9101" in ssh(testbed_hosts["host3"], f"cat {script}").stdout


def test_an_unknown_stack_is_a_usage_error(pulumi_cli, tmp_path):
    pulumi = pulumi_cli(ROOT)
    proc = subprocess.run([sys.executable, "-m", "pdstack", "status", "-s", "no-such-stack"], cwd=ROOT,
                          env=pulumi.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error:" in proc.stderr, proc.stdout + proc.stderr
