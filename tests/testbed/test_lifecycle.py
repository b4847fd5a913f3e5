"""The testbed as a user sees it: up, reach each host over SSH with its pinned host key, isolation,
docker on each host, idempotent up, and a down that leaves nothing behind."""
import json
import subprocess
import sys

import pytest

from testbed import cluster
from testbed.layout import host as host_layout

pytestmark = pytest.mark.testbed


def tb(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True, text=True)
    assert not check or result.returncode == 0, f"testbed {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    if cluster.load_state()["hosts"]:
        tb("down")
    tb("up", "--hosts", "3", "--devices", "4")
    data = json.loads(tb("hosts", "--json").stdout)
    known = tmp_path_factory.mktemp("ssh") / "known_hosts"
    known.write_text("".join(f"{h['address']} {h['hostPublicKey']}\n" for h in data))
    yield [dict(h, known_hosts=str(known)) for h in data]
    tb("down")


def ssh(h, command, check=True):
    return subprocess.run(
        ["ssh", "-i", h["privateKeyPath"], "-p", str(h["port"]), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={h['known_hosts']}",
         f"{h['user']}@{h['address']}", command],
        capture_output=True, text=True, check=check, timeout=60)


def test_hosts_json_describes_each_host(hosts):
    assert [h["name"] for h in hosts] == ["host1", "host2", "host3"]
    assert len({h["address"] for h in hosts}) == 3
    assert all(h["hostPublicKey"].startswith("ssh-ed25519 ") for h in hosts)


def test_each_host_answers_ssh_with_its_own_name_and_key(hosts):
    for h in hosts:
        out = ssh(h, "hostname; hostname -i").stdout.split()
        assert out == [h["name"], h["address"]]


def test_wrong_host_key_is_refused(hosts, tmp_path):
    bad = tmp_path / "known_hosts"
    bad.write_text(f"{hosts[0]['address']} {hosts[1]['hostPublicKey']}\n")
    result = ssh(dict(hosts[0], known_hosts=str(bad)), "true", check=False)
    assert result.returncode != 0
    assert "host key" in result.stderr.lower()


def test_hosts_do_not_see_each_others_files(hosts):
    for path in ("/data/pdstack-probe", "/tmp/pdstack-probe", "/tmp/ranktable_save_path/probe"):
        ssh(hosts[0], f"mkdir -p $(dirname {path}) && echo host1 > {path}")
        assert ssh(hosts[0], f"cat {path}").stdout.strip() == "host1"
        assert ssh(hosts[1], f"test -e {path}", check=False).returncode == 1
    assert subprocess.run(["test", "-e", "/data/pdstack-probe"]).returncode == 1


def test_fake_ascend_parts_are_distinct_per_host_and_device(hosts):
    seen = set()
    for h in hosts:
        for d in range(4):
            out = ssh(h, f"hccn_tool -i {d} -ip -g").stdout.splitlines()
            assert out[0].startswith("ipaddr:")
            seen.add(out[0])
        assert ssh(h, "hccn_tool -i 4 -ip -g", check=False).returncode != 0
        listing = ssh(h, "ls /dev/davinci_manager /dev/hisi_hdc /dev/devmm_svm /usr/local/Ascend/driver "
                         "/etc/hccn.conf /data/models/origin/bf16/config.json && npu-smi info").stdout
        assert "Ascend910-sim" in listing
    assert len(seen) == 12


def test_each_host_has_its_own_docker_daemon(hosts):
    roots = set()
    for h in hosts:
        info = ssh(h, "docker info --format '{{.Name}} {{.ID}}'").stdout.split()
        assert info[0] == h["name"]
        roots.add(info[1])
    assert len(roots) == 3


def test_up_is_idempotent_and_repairs_a_dead_daemon(hosts):
    h1 = host_layout(1)
    before = h1.dockerd_pid.read_text()
    tb("up", "--hosts", "3", "--devices", "4")
    assert h1.dockerd_pid.read_text() == before
    # Kill host2's sshd by its recorded pid: the next `up` must bring it back.
    h2 = host_layout(2)
    subprocess.run(["kill", h2.sshd_pid.read_text().strip()], check=True)
    tb("up", "--hosts", "3", "--devices", "4")
    assert ssh(hosts[1], "hostname").stdout.strip() == "host2"


def test_down_leaves_nothing(hosts):
    tb("down")
    assert cluster.leftovers() == []
    assert "pdtb-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
