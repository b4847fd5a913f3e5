"""The offline toolchain end to end: Go-built CLI + our language host + our command provider run a
Python program whose remote.Command reaches a testbed host; up, then destroy."""
import shutil

import pytest

from .conftest import ROOT, ssh

pytestmark = pytest.mark.e2e


def test_up_then_destroy_runs_the_remote_commands(testbed_hosts, pulumi_cli, tmp_path):
    host = testbed_hosts["host1"]
    workdir = tmp_path / "trivial"
    shutil.copytree(ROOT / "tests/e2e/fixtures/trivial", workdir)
    # The fixture's relative virtualenv path must still point at the repo's venv from the copy.
    (workdir / "Pulumi.yaml").write_text((workdir / "Pulumi.yaml").read_text().replace(
        "../../../../.venv", str(ROOT / ".venv")))
    pulumi = pulumi_cli(workdir)
    pulumi("stack", "init", "e2e")
    pulumi("config", "set", "host", host["address"])
    pulumi("config", "set", "privateKeyPath", host["privateKeyPath"])
    pulumi("config", "set", "hostKey", host["hostPublicKey"])

    up = pulumi("up", "--yes", "--skip-preview")
    assert "+ 2 created" in up.stdout  # the stack and the command
    assert ssh(host, "cat /tmp/pdstack-trivial").stdout.strip() == "created-by-pulumi"
    assert pulumi("stack", "output", "hostname").stdout.strip() == "host1"

    key_body = "".join(open(host["privateKeyPath"]).read().splitlines()[1:-1])
    state_text = "".join(p.read_text(errors="ignore") for p in pulumi.state.rglob("*") if p.is_file())
    assert key_body[:40] not in state_text.replace("\\n", "")
    assert key_body[:40] not in up.stdout + up.stderr

    preview = pulumi("preview", "--diff")
    assert "2 unchanged" in preview.stdout
    assert not any(w in preview.stdout for w in ("to create", "to update", "to replace", "to delete"))

    pulumi("destroy", "--yes", "--skip-preview")
    assert ssh(host, "test -e /tmp/pdstack-trivial", check=False).returncode == 1
    pulumi("stack", "rm", "--yes", "e2e")
