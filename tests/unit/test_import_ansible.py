"""`python -m pdstack import-ansible`: Omni-Infer inventories and server templates -> stack configs.

The layouts are the spec's (omni_ansible_spec.md §2.4, §4, §10), written as inventories under
tests/fixtures/ansible/. Each imported stack must parse and render to the hosts, ports, DP ranks and
offsets, kv ranks and proxy server lists the reference would resolve; everything the reference would get
wrong, or that has no pdstack equivalent, must come back as a warning naming its line.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pdstack import topology
from pdstack.__main__ import main
from pdstack.config.parse import parse_cluster
from pdstack.importer import ImportFailed, Options, import_ansible
from pdstack.importer.expr import Unsupported, render as render_template
from pdstack.rendering.plan import render

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures/ansible"
A3_TEMPLATE = str(FIXTURES / "server_template_a3_ds.yml")
IMAGE = "quay.io/ascend/vllm-ascend:v0.9.0-dsv3.2"
SIXTEEN = '"0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15"'


# ---------------------------------------------------------------------------------------------------
# Helpers


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def line_of(path: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing `needle`."""
    hits = [i for i, line in enumerate(Path(path).read_text().splitlines(), 1) if needle in line]
    return hits[nth - 1]


def warnings_at(imported, path: str, line: int) -> list[str]:
    return [f.message for f in imported.report.warnings if f.source.file == path and f.source.line == line]


def notes_at(imported, path: str, line: int) -> list[str]:
    return [f.message for f in imported.report.notes if f.source.file == path and f.source.line == line]


def problems(err: ImportFailed) -> list[tuple[str, int | None, str]]:
    return [(p.source.file, p.source.line, p.message) for p in err.problems]


HEADER = """\
all:
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: {key}
    global_port_base: 8000
    base_api_port: 9000
    proxy_port: 7000
    port_offset: {{P: 0, D: 100}}
"""
ONE_DECODE = """
    d0: {ansible_host: 10.0.1.1, host_ip: 10.0.1.1, node_rank: 0, ascend_rt_visible_devices: "0,1"}
"""


def _block(text: str, indent: int) -> str:
    return textwrap.indent(textwrap.dedent(text).strip("\n"), " " * indent) + "\n" if text.strip() else ""


def small(tmp_path: Path, p_hosts: str, d_hosts: str = ONE_DECODE, extra_vars: str = "", c_hosts: str = "") -> str:
    """An inventory with the usual all.vars (and a key file that exists) around the given group P, D, C hosts."""
    key = tmp_path / "id_ed25519"
    key.write_text("not read by the import\n")
    text = HEADER.format(key=key) + _block(extra_vars, 4) + "  children:\n"
    text += "    P:\n      hosts:\n" + _block(p_hosts, 8) + "    D:\n      hosts:\n" + _block(d_hosts, 8)
    if c_hosts:
        text += "    C:\n      hosts:\n" + _block(c_hosts, 8)
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    return str(path)


def quick(path: str, template: str | None = None):
    return import_ansible(path, template, Options(image=None if template else IMAGE))


def script_of(plan) -> str:
    return plan.files[0].content


def kv(plan) -> dict:
    return json.loads(re.search(r"--kv-transfer-config '([^']+)'", script_of(plan)).group(1))


def reference_decode_servers(d_hosts: list[tuple[str, int]], per_host: int) -> list[str]:
    """§4 DECODE_API_SERVER_LIST `ip:api_port@N`, expanded as run_proxy_server.sh does (§5.6)."""
    return [f"{address}:{api_port + i}" for address, api_port in d_hosts for i in range(per_host)]


# ---------------------------------------------------------------------------------------------------
# The four layouts: the imported stack renders what the reference resolves


def test_1p32_1d32_renders_the_reference_deployment(tmp_path):
    inventory = str(FIXTURES / "inventory_1P32_1D32.yml")
    imported = import_ansible(inventory, A3_TEMPLATE)
    spec = imported.spec
    # The written file is the same stack.
    assert main(["import-ansible", inventory, A3_TEMPLATE, "--stack", "prod", "--dir", str(tmp_path)]) == 0
    written = yaml.safe_load((tmp_path / "Pulumi.prod.yaml").read_text())["config"]
    assert parse_cluster(written) == spec

    # Hosts: each machine once; c0 shares p0's address, so the proxy runs on p0.
    assert {h.name: h.address for h in spec.hosts} == {
        "p0": "10.0.0.1", "p1": "10.0.0.2", "p2": "10.0.0.3", "p3": "10.0.0.4",
        "d0": "10.0.0.5", "d1": "10.0.0.6", "d2": "10.0.0.7", "d3": "10.0.0.8"}
    assert all(h.ssh.user == "root" and h.ssh.private_key_path == "/path/to/key.pem" for h in spec.hosts)
    assert (spec.proxy.host, spec.proxy.port) == ("p0", 7000)

    deployment = render(spec)
    # §10: one prefill instance, TP 64 over p0..p3, API p0:9000, DP RPC 8000, kv rank 0 of 2.
    (prefill, plans), = deployment.prefill
    assert prefill.hosts == ("p0", "p1", "p2", "p3") and prefill.tensor_parallel == 64
    assert deployment.prefill_servers == ("10.0.0.1:9000",)  # PREFILL_API_SERVER_LIST
    assert topology.prefill_master_port(spec, prefill) == 8000
    assert kv(plans[0]) == {"kv_connector": "AscendHcclConnectorV1", "kv_buffer_device": "npu",
                            "kv_role": "kv_producer", "kv_rank": 0, "engine_id": 0, "kv_parallel_size": 2}
    # Decode: DP 64 over d0..d3, master d0:8100, d_n serves 9100+n .. 9115+n, DP offsets 0/16/32/48.
    (decode, dplans), = deployment.decode
    assert decode.data_parallel == 64 and decode.tensor_parallel == 1
    assert topology.decode_master_port(spec, decode) == 8100
    assert [topology.decode_dp_offset(decode, n) for n in range(4)] == [0, 16, 32, 48]
    for n, plan in enumerate(dplans):
        text = script_of(plan)
        assert f"export SERVER_OFFSET={16 * n}\n" in text and "export VLLM_DP_SIZE=64\n" in text
        assert "export VLLM_DP_MASTER_IP=10.0.0.5\n" in text and "export VLLM_DP_MASTER_PORT=8100\n" in text
        assert f"VLLM_DP_RANK={16 * n} " in text and f"--port {9100 + n} " in text
        assert kv(plan)["kv_rank"] == 1 and kv(plan)["kv_parallel_size"] == 2
    expected = reference_decode_servers([("10.0.0.5", 9100), ("10.0.0.6", 9101), ("10.0.0.7", 9102),
                                         ("10.0.0.8", 9103)], 16)
    assert list(deployment.decode_servers) == expected and len(expected) == 64
    assert deployment.decode_servers[16] == "10.0.0.6:9101" and deployment.decode_servers[-1] == "10.0.0.8:9118"
    # The proxy's server lists are those lists; container names are the reference's.
    proxy = script_of(deployment.proxy)
    assert f"--prefill-servers-list 10.0.0.1:9000 --decode-servers-list {','.join(expected)} " in proxy
    assert deployment.proxy.container.name == "you_name_omni_infer_proxy_p0"
    assert plans[1].container.name == "you_name_omni_infer_prefill_p1"
    # Template values.
    assert spec.paths.logs == "/tmp/log_path" and spec.paths.scripts == "/tmp/scripts_path"
    assert spec.paths.ranktables == "/tmp/ranktable_save_path" and spec.model.path == "/data/models/origin/bf16"
    assert spec.image == "swr.cn-east-4.myhuaweicloud.com/omni/omni_infer-a3-arm:release_v0.4.2"
    assert (prefill.engine.max_model_len, prefill.engine.max_num_seqs, prefill.engine.gpu_memory_utilization) == (
        66560, 16, 0.92)
    assert (decode.engine.max_model_len, decode.engine.max_num_seqs, decode.engine.gpu_memory_utilization) == (
        66560, 4, 0.95)


def test_1p32_1d32_reports_what_it_does_not_carry_over():
    inventory = str(FIXTURES / "inventory_1P32_1D32.yml")
    imported = import_ansible(inventory, A3_TEMPLATE)
    assert any("ansible_ssh_common_args has no pdstack equivalent" in m
               for m in warnings_at(imported, inventory, line_of(inventory, "ansible_ssh_common_args")))
    for var in ("LOG_PATH_IN_EXECUTOR", "CODE_PATH", "USE_OMNI_PROXY"):
        messages = warnings_at(imported, A3_TEMPLATE, line_of(A3_TEMPLATE, f"    {var}:"))
        assert any(m.startswith(f"{var} has no pdstack equivalent") for m in messages), (var, messages)
    c0 = line_of(inventory, "c0:")
    assert any("c0 shares p0's address 10.0.0.1" in m for m in notes_at(imported, inventory, c0))
    assert notes_at(imported, inventory, line_of(inventory, 'role: "C"'))
    # Nothing about the values that do map.
    assert not [f for f in imported.report.warnings if "port" in f.message and "node_port" in f.message]


def test_2p1d_renders_two_prefill_instances_and_dp_32():
    imported = import_ansible(str(FIXTURES / "inventory_2P1D.yml"), A3_TEMPLATE)
    spec = imported.spec
    deployment = render(spec)
    assert [(i.name, i.hosts) for i in spec.prefill] == [("prefill-0", ("p0",)), ("prefill-1", ("p1",))]
    assert deployment.prefill_servers == ("10.0.0.1:9000", "10.0.0.2:9001")
    assert [topology.prefill_master_port(spec, i) for i in spec.prefill] == [8000, 8001]
    assert topology.kv_parallel_size(spec) == 3
    (decode, plans), = deployment.decode
    assert decode.data_parallel == 32
    assert [kv(p)["kv_rank"] for p in plans] == [2, 2]
    assert [topology.decode_dp_offset(decode, n) for n in range(2)] == [0, 16]
    assert "export SERVER_OFFSET=16\n" in script_of(plans[1])
    assert [kv(p)["kv_rank"] for _, ps in deployment.prefill for p in ps] == [0, 1]
    assert list(deployment.decode_servers) == reference_decode_servers([("10.0.0.5", 9100), ("10.0.0.6", 9101)], 16)
    assert spec.proxy.host == "p0"


def test_4p1d_renders_four_prefill_instances_and_keeps_per_group_ssh():
    inventory = str(FIXTURES / "inventory_4P1D.yml")
    imported = import_ansible(inventory, A3_TEMPLATE)
    spec = imported.spec
    deployment = render(spec)
    assert deployment.prefill_servers == ("10.0.0.1:9000", "10.0.0.2:9001", "10.0.0.3:9002", "10.0.0.4:9003")
    assert [kv(ps[0])["kv_rank"] for _, ps in deployment.prefill] == [0, 1, 2, 3]
    assert topology.kv_parallel_size(spec) == 5
    (decode, plans), = deployment.decode
    assert [kv(p)["kv_rank"] for p in plans] == [4, 4] and decode.data_parallel == 32
    assert list(deployment.decode_servers) == reference_decode_servers([("10.0.0.5", 9100), ("10.0.0.6", 9101)], 16)
    # The proxy has a machine of its own; SSH settings come from group vars, p3 on another port.
    assert (spec.proxy.host, spec.host("c0").address) == ("c0", "10.0.0.9")
    assert spec.host("p3").ssh.port == 2222 and spec.host("p0").ssh.port == 22
    keys = {h.name: h.ssh.private_key_path for h in spec.hosts}
    assert keys == {"p0": "~/.ssh/a3_prefill_key", "p1": "~/.ssh/a3_prefill_key", "p2": "~/.ssh/a3_prefill_key",
                    "p3": "~/.ssh/a3_prefill_key", "d0": "~/.ssh/a3_decode_key", "d1": "~/.ssh/a3_decode_key",
                    "c0": "~/.ssh/a3_proxy_key"}
    config = imported.mapped.config
    assert config["pdstack:ssh"] == {"user": "root", "privateKeyPath": "~/.ssh/a3_prefill_key"}
    assert config["pdstack:hosts"]["p3"] == {"address": "10.0.0.4", "port": 2222}


def test_elastic_2p2d_child_groups_are_decode_instances():
    inventory = str(FIXTURES / "inventory_2P2D_elastic.yml")
    template = str(FIXTURES / "server_template_2p2d.yml")
    imported = import_ansible(inventory, template)
    spec = imported.spec
    deployment = render(spec)
    assert [(i.name, i.hosts, i.tensor_parallel) for i in spec.decode] == [
        ("decode-0", ("d0", "d1"), 2), ("decode-1", ("d2", "d3"), 2)]
    assert imported.mapped.instance_origins == {"prefill-0": "P hosts with host_ip 10.0.0.1, kv_rank 0",
                                                "prefill-1": "P hosts with host_ip 10.0.0.2, kv_rank 1",
                                                "decode-0": "group D0", "decode-1": "group D1"}
    assert [topology.decode_master_port(spec, i) for i in spec.decode] == [8100, 8101]
    assert topology.kv_parallel_size(spec) == 4
    assert deployment.prefill_servers == ("10.0.0.1:9000", "10.0.0.2:9001")
    kv_ranks = [sorted({kv(p)["kv_rank"] for p in ps}) for _, ps in deployment.decode]
    assert kv_ranks == [[2], [3]]
    # TP 2: 8 servers per host, each instance's DP ranks from 0.
    assert list(deployment.decode_servers) == reference_decode_servers(
        [("10.0.0.5", 9100), ("10.0.0.6", 9101), ("10.0.0.7", 9100), ("10.0.0.8", 9101)], 8)
    assert [topology.decode_dp_offset(i, 1) for i in spec.decode] == [8, 8]
    assert spec.containers.decode == "elastic_decode" and spec.proxy.decode_policy == "round_robin"
    assert spec.prefill[0].engine.max_model_len == 163840 and spec.model.path == "/data/models/DeepSeek-V3.2-INT8"
    # No port warnings: D1's node_port 8101 is what pdstack derives.
    assert not [f for f in imported.report.warnings if "node_port" in f.message or "api_port" in f.message]
    for var in ("etcd_port", "mooncake_master_port", "mooncake_metrics_port"):
        assert warnings_at(imported, inventory, line_of(inventory, f"{var}:"))
    assert warnings_at(imported, template, line_of(template, "HTTP_PROXY:"))


# ---------------------------------------------------------------------------------------------------
# What the reference would get wrong (§9), each with its line


def test_master_listed_after_its_member_is_a_warning_and_the_master_comes_first(tmp_path):
    path = small(tmp_path, """
        p1: {ansible_host: 10.0.0.2, host_ip: 10.0.0.1, kv_rank: 0, node_rank: 1, ascend_rt_visible_devices: "0,1"}
        p0: {ansible_host: 10.0.0.1, host_ip: 10.0.0.1, kv_rank: 0, node_rank: 0, ascend_rt_visible_devices: "0,1"}
    """)
    imported = quick(path)
    assert imported.spec.prefill[0].hosts == ("p0", "p1")
    messages = warnings_at(imported, path, line_of(path, "p1:"))
    assert any("p1 is listed before its master p0" in m for m in messages), messages


def test_members_not_contiguous_is_a_warning(tmp_path):
    path = small(tmp_path, """
        p0: {ansible_host: 10.0.0.1, host_ip: 10.0.0.1, kv_rank: 0, ascend_rt_visible_devices: "0,1"}
        p2: {ansible_host: 10.0.0.3, host_ip: 10.0.0.3, kv_rank: 1, ascend_rt_visible_devices: "0,1"}
        p1: {ansible_host: 10.0.0.2, host_ip: 10.0.0.1, kv_rank: 0, ascend_rt_visible_devices: "0,1"}
    """)
    imported = quick(path)
    assert [i.hosts for i in imported.spec.prefill] == [("p0", "p1"), ("p2",)]
    messages = warnings_at(imported, path, line_of(path, "p1:"))
    assert any("p1 belongs to p0's instance but is listed after p2" in m for m in messages), messages


def test_inconsistent_host_ip_is_a_warning_naming_the_line(tmp_path):
    path = small(tmp_path, """
        p0: {ansible_host: 10.0.0.1, host_ip: 10.0.0.1, kv_rank: 0, ascend_rt_visible_devices: "0,1"}
        p1: {ansible_host: 10.0.0.2, host_ip: 10.0.0.9, kv_rank: 1, ascend_rt_visible_devices: "0,1"}
    """, d_hosts="""
        d0: {ansible_host: 10.0.1.1, host_ip: 10.0.1.1, ascend_rt_visible_devices: "0,1"}
        d1: {ansible_host: 10.0.1.2, host_ip: 10.0.1.7, ascend_rt_visible_devices: "0,1"}
    """)
    imported = quick(path)
    assert [i.hosts for i in imported.spec.prefill] == [("p0",), ("p1",)]
    assert any("host_ip 10.0.0.9 of p1 is not the ansible_host of a prefill master" in m
               for m in warnings_at(imported, path, line_of(path, "p1:")))
    assert imported.spec.decode[0].hosts == ("d0", "d1")
    assert any("host_ip 10.0.1.7 of d1 is not the address of its decode master d0" in m
               for m in warnings_at(imported, path, line_of(path, "d1:")))


def test_kv_rank_not_shared_or_not_0_to_x_is_a_warning_and_instances_follow_kv_rank(tmp_path):
    path = small(tmp_path, """
        p0: {ansible_host: 10.0.0.1, host_ip: 10.0.0.1, kv_rank: 5, ascend_rt_visible_devices: "0,1"}
        p1: {ansible_host: 10.0.0.2, host_ip: 10.0.0.1, kv_rank: 1, ascend_rt_visible_devices: "0,1"}
        p2: {ansible_host: 10.0.0.3, host_ip: 10.0.0.3, kv_rank: 0, ascend_rt_visible_devices: "0,1"}
    """)
    imported = quick(path)
    assert [i.hosts for i in imported.spec.prefill] == [("p2",), ("p0", "p1")]  # kv_rank order
    assert any("kv_rank 1 of p1 differs from 5 of its master p0" in m
               for m in warnings_at(imported, path, line_of(path, "p1:")))
    assert any("kv_rank 5 of p0 is outside 0..1" in m for m in warnings_at(imported, path, line_of(path, "p0:")))


def test_decode_master_not_first_and_port_offsets_are_warnings(tmp_path):
    path = small(tmp_path, """
        p0: {ansible_host: 10.0.0.1, host_ip: 10.0.0.1, kv_rank: 0, ascend_rt_visible_devices: "0,1",
             api_port: "{{ base_api_port * 2 }}"}
    """, d_hosts="""
        d2: {ansible_host: 10.0.1.3, host_ip: 10.0.1.1, node_rank: 2, ascend_rt_visible_devices: "0,1"}
        d1: {ansible_host: 10.0.1.2, host_ip: 10.0.1.1, node_rank: 1, ascend_rt_visible_devices: "0,1"}
        d0: {ansible_host: 10.0.1.1, host_ip: 10.0.1.1, node_rank: 0, ascend_rt_visible_devices: "0,1",
             node_port: 8150}
    """)
    Path(path).write_text(Path(path).read_text().replace("port_offset: {P: 0, D: 100}", "port_offset: {P: 0, D: 200}"))
    imported = quick(path)
    assert imported.spec.decode[0].hosts == ("d0", "d1", "d2")  # master first, then by node_rank
    assert any("decode master d0 is not listed first" in m for m in warnings_at(imported, path, line_of(path, "d0:")))
    assert any("d2 is listed before d1 but has a higher node_rank" in m
               for m in warnings_at(imported, path, line_of(path, "d2:")))
    # A template the evaluator does not follow: the raw text and the derived value.
    messages = warnings_at(imported, path, line_of(path, 'api_port: "{{'))
    assert any("'{{ base_api_port * 2 }}' cannot be evaluated" in m and "pdstack uses 9000" in m for m in messages)
    # port_offset.D 200: pdstack keeps decode 100 above prefill; a literal port that differs is named too.
    assert any("port_offset.D is 200" in m for m in warnings_at(imported, path, line_of(path, "port_offset:")))
    assert any("node_port of d0 is 8150" in m and "pdstack uses 8100" in m
               for m in warnings_at(imported, path, line_of(path, "node_port: 8150")))


def test_device_lists_the_reference_would_misread_are_warnings(tmp_path):
    path = small(tmp_path, """
        p0: {ansible_host: 10.0.0.1, host_ip: 10.0.0.1, kv_rank: 0, ascend_rt_visible_devices: "0,1,2,3,"}
        p1: {ansible_host: 10.0.0.2, host_ip: 10.0.0.1, kv_rank: 0, ascend_rt_visible_devices: "0, 1, 2, 3"}
        p2: {ansible_host: 10.0.0.3, host_ip: 10.0.0.3, kv_rank: 1, ascend_rt_visible_devices: "0-3"}
    """)
    imported = quick(path)
    assert [i.devices for i in imported.spec.prefill] == [(0, 1, 2, 3), (0, 1, 2, 3)]
    for host in ("p0", "p1", "p2"):
        assert any(f"ascend_rt_visible_devices of {host} is" in m and "pdstack reads devices 0-3" in m
                   for m in warnings_at(imported, path, line_of(path, f"{host}:")))


def test_unknown_variables_groups_and_duplicate_keys_are_warnings(tmp_path):
    path = write(tmp_path, "inventory.yml", """
        all:
          vars:
            ansible_ssh_private_key_file: /keys/id
            my_setting: 1
          children:
            P:
              hosts:
                p0: {ansible_host: 10.0.0.1, host_ip: 10.0.0.1, kv_rank: 0, ascend_rt_visible_devices: "0,1"}
            D:
              hosts:
                d0: {ansible_host: 10.0.1.1, host_ip: 10.0.1.1, ascend_rt_visible_devices: "0,1"}
                d0: {ansible_host: 10.0.1.2, host_ip: 10.0.1.2, ascend_rt_visible_devices: "0,1"}
            monitoring:
              hosts:
                m0: {ansible_host: 10.0.9.1}
    """)
    imported = quick(path)
    assert any("my_setting" in m for m in warnings_at(imported, path, line_of(path, "my_setting")))
    assert any("host m0 is in none of the groups P, D, C" in m
               for m in warnings_at(imported, path, line_of(path, "m0:")))
    assert any("also set at line" in m for m in warnings_at(imported, path, line_of(path, "d0:", 2)))
    assert imported.spec.host("d0").address == "10.0.1.2"  # the later one, as Ansible
    # No C group: the proxy goes on the first prefill master, with a warning.
    assert imported.spec.proxy.host == "p0"
    assert any("no proxy host (group C)" in f.message for f in imported.report.warnings)
    assert any("no ansible_user" in f.message for f in imported.report.notes)


def test_templated_values_are_evaluated_including_hostvars(tmp_path):
    path = small(tmp_path, """
        p0: {ansible_host: 10.0.0.1, host_ip: "{{ hostvars['p0'].ansible_host }}", kv_rank: 0,
             ascend_rt_visible_devices: "{{ devs }}"}
        p1: {ansible_host: "10.0.0.{{ 1 + 1 }}", host_ip: "{{ hostvars.p0['ansible_host'] }}", kv_rank: 0,
             ascend_rt_visible_devices: "{{ devs }}"}
    """, extra_vars="""
        devs: "0,1,2,3"
    """, c_hosts="""
        c0: {ansible_host: 10.0.2.1, node_rank: 2, node_port: "{{ proxy_port + node_rank }}"}
    """)
    imported = quick(path)
    spec = imported.spec
    assert spec.prefill[0].hosts == ("p0", "p1") and spec.prefill[0].devices == (0, 1, 2, 3)
    assert spec.host("p1").address == "10.0.0.2"
    assert (spec.proxy.host, spec.proxy.port) == ("c0", 7002)
    assert not imported.report.warnings, imported.report.warnings


@pytest.mark.parametrize("text, expected", [
    ("{{ global_port_base + port_offset.P + kv_rank }}", 8001),
    ("{{ base_api_port + port_offset['D'] + node_rank }}", 9102),
    ("{{ (proxy_port|int) - 1 }}", 6999),
    ("node-{{ kv_rank }}", "node-1"),
    ("plain", "plain"),
])
def test_the_evaluator_follows_the_reference_forms(text, expected):
    env = {"global_port_base": 8000, "base_api_port": 9000, "proxy_port": "7000", "kv_rank": 1, "node_rank": 2,
           "port_offset": {"P": 0, "D": 100}}

    def lookup(name):
        if name not in env:
            raise Unsupported(f"{name} is not defined")
        return env[name]
    assert render_template(text, lookup) == expected


@pytest.mark.parametrize("text", ["{{ a * 2 }}", "{{ a | default(1) }}", "{% if a %}1{% endif %}",
                                  "{{ lookup('env', 'X') }}", "{{ undefined_var }}", "{{ a.b.c }}", "{{ a + 'x' }}"])
def test_the_evaluator_refuses_everything_else(text):
    with pytest.raises(Unsupported):
        render_template(text, lambda name: {"a": 1}[name] if name == "a" else (_ for _ in ()).throw(Unsupported(name)))


# ---------------------------------------------------------------------------------------------------
# The template


def test_template_variables_without_equivalent_are_warnings_each_with_its_line(tmp_path):
    template = write(tmp_path, "template.yml", """
        - name: run omniai
          hosts: all
          environment:
            LOG_PATH: /var/log/omni/
            MODEL_PATH: /models/ds
            DOCKER_IMAGE_ID: registry.example.com/omni/infer:1.0
            CODE_PATH: /data/code
            USE_OMNI_PROXY: "1"
            LOG_PATH_IN_EXECUTOR: /tmp/x
            HTTP_PROXY: http://proxy.example.com:3128
            SOMETHING_ELSE: 1
            PREFILL_LB_SDK: no_such_policy
          vars:
            ranktable_save_path: /data/rt
            unrelated: 1
    """)
    path = small(tmp_path, """
        p0: {ansible_host: 10.0.0.1, host_ip: 10.0.0.1, kv_rank: 0, ascend_rt_visible_devices: "0,1"}
    """)
    imported = import_ansible(path, template)
    for var, text in (("CODE_PATH", "has no pdstack equivalent"), ("USE_OMNI_PROXY", "USE_OMNI_PROXY is 1"),
                      ("LOG_PATH_IN_EXECUTOR", "has no pdstack equivalent"),
                      ("HTTP_PROXY", "has no pdstack equivalent"),
                      ("SOMETHING_ELSE", "not a variable of the a3_ds template"),
                      ("PREFILL_LB_SDK", "falls back to least_conn"), ("unrelated", "no pdstack equivalent")):
        messages = warnings_at(imported, template, line_of(template, f"{var}:"))
        assert any(text in m for m in messages), (var, messages)
    spec = imported.spec
    assert (spec.paths.logs, spec.paths.ranktables, spec.model.path) == ("/var/log/omni", "/data/rt", "/models/ds")
    assert spec.image == "registry.example.com/omni/infer:1.0" and spec.proxy.prefill_policy == "least_conn"


def test_run_script_settings_become_engine_settings(tmp_path):
    template = write(tmp_path, "template.yml", """
        - name: run omniai
          hosts: all
          environment:
            DOCKER_IMAGE_ID: registry.example.com/omni/infer:1.0
            MODEL_LEN_MAX_DECODE: "163840"
            DECODE_TENSOR_PARALLEL_SIZE: "2"
          tasks:
            - block:
                - name: prefill script
                  copy:
                    dest: /tmp/scripts_path/vllm_run_for_p.sh
                    content: |
                      GPU_UTIL=0.9
                      EXTRA_ARGS='--max-num-batched-tokens 66560 --max-num-seqs 12 --long-prefill-token-threshold 66560'
            - name: decode script
              copy:
                dest: "{{ ansible_env.SCRIPTS_PATH }}/vllm_run_for_d.sh"
                content: |
                  HCCL_BUFFSIZE=400
                  MODEL_EXTRA_CFG_PATH=/workspace/omniinfer/tests/test_config/test_config_decode.json
                  EXTRA_ARGS='--enable-expert-parallel --max-num-seqs 8'
    """)
    path = small(tmp_path, """
        p0: {ansible_host: 10.0.0.1, host_ip: 10.0.0.1, kv_rank: 0, ascend_rt_visible_devices: "0,1"}
    """)
    imported = import_ansible(path, template)
    prefill, decode = imported.spec.prefill[0].engine, imported.spec.decode[0]
    assert (prefill.max_num_seqs, prefill.gpu_memory_utilization) == (12, 0.9)
    assert prefill.extra_args == ("--max-num-batched-tokens", "66560", "--long-prefill-token-threshold", "66560")
    assert (decode.engine.max_model_len, decode.engine.max_num_seqs, decode.tensor_parallel) == (163840, 8, 2)
    assert dict(decode.engine.env) == {
        "HCCL_BUFFSIZE": "400",
        "MODEL_EXTRA_CFG_PATH": "/workspace/omniinfer/tests/test_config/test_config_decode.json"}
    assert notes_at(imported, template, line_of(template, "--max-num-batched-tokens 66560"))


def test_a_value_that_does_not_validate_names_the_stack_key_and_the_template_line(tmp_path):
    template = write(tmp_path, "template.yml", """
        - hosts: all
          environment:
            DOCKER_IMAGE_ID: registry.example.com/omni/infer:1.0
            LOG_PATH: relative/logs
    """)
    path = small(tmp_path, """
        p0: {ansible_host: 10.0.0.1, host_ip: 10.0.0.1, kv_rank: 0, ascend_rt_visible_devices: "0,1"}
    """)
    with pytest.raises(ImportFailed) as err:
        import_ansible(path, template)
    (file, line, message), = problems(err.value)
    assert (file, line) == (template, line_of(template, "LOG_PATH"))
    assert message.startswith("pdstack:paths.logs:") and "absolute path" in message


# ---------------------------------------------------------------------------------------------------
# Refused and malformed inputs: clear errors with file and line


def test_a_password_is_refused_with_how_to_use_a_key_instead(tmp_path):
    path = write(tmp_path, "inventory.yml", """
        all:
          vars:
            ansible_ssh_pass: hunter2
          children:
            P:
              hosts:
                p0:
                  ansible_host: 10.0.0.1
                  ansible_become_pass: !vault |
                    $ANSIBLE_VAULT;1.1;AES256
                    61626364
                  host_ip: 10.0.0.1
                  ascend_rt_visible_devices: "0,1"
            D:
              hosts:
                d0: {ansible_host: 10.0.1.1, host_ip: 10.0.1.1, ascend_rt_visible_devices: "0,1"}
    """)
    with pytest.raises(ImportFailed) as err:
        quick(path)
    found = problems(err.value)
    assert [(line, message.split(" ")[0]) for _, line, message in found] == [
        (line_of(path, "ansible_ssh_pass"), "ansible_ssh_pass"), (line_of(path, "ansible_become_pass"),
                                                                  "ansible_become_pass")]
    assert "privateKeyPath" in found[0][2]
    assert "bin/pulumi config set --secret --path pdstack:ssh.privateKey" in found[0][2]
    assert "hunter2" not in str(err.value)


def inventory_error(tmp_path, text: str, name: str = "inventory.yml") -> tuple[str, list]:
    path = write(tmp_path, name, text)
    with pytest.raises(ImportFailed) as err:
        quick(path)
    return path, problems(err.value)


def test_not_yaml_names_the_line(tmp_path):
    path, found = inventory_error(tmp_path, """
        all:
          children:
            P: [unclosed
    """)
    assert found[0][0] == path and found[0][1] is not None and "not valid YAML" in found[0][2]


def test_an_ini_inventory_says_how_to_convert_it(tmp_path):
    _, found = inventory_error(tmp_path, """
        [P]
        p0 ansible_host=10.0.0.1
    """)
    assert "ansible-inventory -i INVENTORY -y --list" in found[0][2]


@pytest.mark.parametrize("text, needle, message", [
    ("", None, "the inventory is empty"),
    ("- a\n- b\n", None, "not a map of groups"),
    ("all:\n  children:\n    D:\n      hosts:\n        d0: {ansible_host: 10.0.1.1}\n", None, "no group P"),
    ("all:\n  children:\n    P:\n      hosts:\n        p0: {ansible_host: 10.0.0.1}\n", None, "no group D"),
    ("all:\n  children:\n    P:\n      hosts: [p0, p1]\n    D:\n", "hosts: [p0", "must be a map of host name"),
    ("all:\n  children:\n    P:\n      hosts:\n        p0: {host_ip: 10.0.0.1}\n    D:\n      hosts:\n"
     "        d0: {ansible_host: 10.0.1.1}\n", "p0:", "host p0 (group P) has no ansible_host"),
    ("all:\n  children:\n    P:\n      hosts:\n"
     "        p0: {ansible_host: 10.0.0.1, ascend_rt_visible_devices: \"0,x\"}\n"
     "    D:\n      hosts:\n        d0: {ansible_host: 10.0.1.1, ascend_rt_visible_devices: \"0\"}\n",
     "p0:", "ascend_rt_visible_devices of p0"),
    ("all:\n  children:\n    P:\n      hosts:\n        p0: {ansible_host: 10.0.0.1}\n"
     "    D:\n      hosts:\n        d0: {ansible_host: 10.0.1.1, ascend_rt_visible_devices: \"0\"}\n",
     "p0:", "has no ascend_rt_visible_devices"),
    ("all:\n  children:\n    P:\n      hosts:\n        p0: {ansible_host: 10.0.0.1, ascend_rt_visible_devices: \"0\"}\n"
     "        p1: {ansible_host: 10.0.0.1, ascend_rt_visible_devices: \"1\"}\n"
     "    D:\n      hosts:\n        d0: {ansible_host: 10.0.1.1, ascend_rt_visible_devices: \"0\"}\n",
     "p1:", "one prefill container per machine"),
    ("all:\n  children:\n    P:\n      hosts:\n"
     "        p0: {ansible_host: pnode.example.com, ascend_rt_visible_devices: \"0\"}\n"
     "    D:\n      hosts:\n        d0: {ansible_host: 10.0.1.1, ascend_rt_visible_devices: \"0\"}\n",
     "p0:", "need an IPv4 address"),
    ("all:\n  children:\n    P:\n      hosts:\n        p0: {ansible_host: 10.0.0.1, host_ip: 10.0.0.1, "
     "ascend_rt_visible_devices: \"0\"}\n        p1: {ansible_host: 10.0.0.2, host_ip: 10.0.0.1, "
     "ascend_rt_visible_devices: \"0,1\"}\n    D:\n      hosts:\n        d0: {ansible_host: 10.0.1.1, "
     "ascend_rt_visible_devices: \"0\"}\n", "p1:", "same devices on every host of an instance"),
    ("all:\n  children:\n    P:\n      hosts:\n        p0: {ansible_host: 10.0.0.1, ascend_rt_visible_devices: \"0\"}\n"
     "    D:\n      hosts:\n        d9: {ansible_host: 10.0.1.9, ascend_rt_visible_devices: \"0\"}\n"
     "      children:\n        D0:\n          hosts:\n            d0: {ansible_host: 10.0.1.1, "
     "ascend_rt_visible_devices: \"0\"}\n", "d9:", "in none of its child groups"),
])
def test_malformed_inventories_give_an_error_naming_file_and_line(tmp_path, text, needle, message):
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    with pytest.raises(ImportFailed) as err:
        quick(str(path))
    found = problems(err.value)
    assert any(message in m for _, _, m in found), found
    if needle:
        assert any(f == str(path) and line == line_of(str(path), needle) for f, line, _ in found), found


def test_bad_templates_and_images(tmp_path):
    path = small(tmp_path, """
        p0: {ansible_host: 10.0.0.1, host_ip: 10.0.0.1, kv_rank: 0, ascend_rt_visible_devices: "0,1"}
    """)
    not_a_playbook = write(tmp_path, "t1.yml", "environment: {LOG_PATH: /x}\n")
    with pytest.raises(ImportFailed, match="not an Ansible playbook"):
        import_ansible(path, not_a_playbook)
    placeholder = write(tmp_path, "t2.yml", """
        - hosts: all
          environment:
            DOCKER_IMAGE_ID: "REPOSITORY:TAG"
    """)
    with pytest.raises(ImportFailed) as err:
        import_ansible(path, placeholder)
    (file, line, message), = problems(err.value)
    assert (file, line) == (placeholder, line_of(placeholder, "DOCKER_IMAGE_ID")) and "--image" in message
    assert import_ansible(path, placeholder, Options(image=IMAGE)).spec.image == IMAGE  # --image stands in
    with pytest.raises(ImportFailed, match="no image"):
        import_ansible(path)
    with pytest.raises(ImportFailed, match="no such file"):
        import_ansible(str(tmp_path / "missing.yml"))


# ---------------------------------------------------------------------------------------------------
# The command


def test_the_command_writes_the_file_and_refuses_to_overwrite_without_force(tmp_path, capsys):
    inventory = str(FIXTURES / "inventory_2P1D.yml")
    args = ["import-ansible", inventory, A3_TEMPLATE, "--stack", "prod", "--dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "prefill-1: kv rank 1, master p1" in out and "proxy: p0 10.0.0.1:7000" in out
    assert "warning: CODE_PATH has no pdstack equivalent" in out
    target = tmp_path / "Pulumi.prod.yaml"
    first = target.read_text()
    assert first.startswith("# Imported from inventory_2P1D.yml and server_template_a3_ds.yml")

    target.write_text(first + "# edited by hand\n")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "already exists; pass --force" in err
    assert target.read_text().endswith("# edited by hand\n")  # untouched

    assert main(args + ["--force", "--readiness-timeout", "300"]) == 0
    assert yaml.safe_load(target.read_text())["config"]["pdstack:readiness"] == {"timeoutSeconds": 300}


def test_the_command_writes_nothing_on_bad_input(tmp_path, capsys):
    bad = write(tmp_path, "inventory.yml", "all:\n  children:\n    P: {hosts: {p0: {}}}\n    D: {hosts: {d0: {}}}\n")
    assert main(["import-ansible", bad, "--stack", "prod", "--dir", str(tmp_path), "--image", IMAGE]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: error: host p0 (group P) has no ansible_host" in err and "nothing written" in err
    assert not (tmp_path / "Pulumi.prod.yaml").exists()
    assert main(["import-ansible", bad, "--stack", "no/slashes", "--dir", str(tmp_path)]) == 2


def test_python_m_pdstack_exits_2_without_a_traceback(tmp_path):
    bad = write(tmp_path, "inventory.yml", "all: [\n")
    proc = subprocess.run([sys.executable, "-m", "pdstack", "import-ansible", bad, "--stack", "x", "--dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and f"{bad}:" in proc.stderr and "not valid YAML" in proc.stderr


@pytest.mark.parametrize("inventory, template", [
    ("inventory_1P32_1D32.yml", "server_template_a3_ds.yml"), ("inventory_2P1D.yml", "server_template_a3_ds.yml"),
    ("inventory_4P1D.yml", "server_template_a3_ds.yml"), ("inventory_2P2D_elastic.yml", "server_template_2p2d.yml"),
    ("inventory_testbed_1P1D.yml", "server_template_testbed.yml"),
])
def test_the_written_file_is_the_imported_stack_and_lists_the_warnings(tmp_path, capsys, inventory, template):
    args = ["import-ansible", str(FIXTURES / inventory), str(FIXTURES / template), "--stack", "s", "--dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    text = (tmp_path / "Pulumi.s.yaml").read_text()
    imported = import_ansible(str(FIXTURES / inventory), str(FIXTURES / template))
    assert parse_cluster(yaml.safe_load(text)["config"]) == imported.spec
    assert list(yaml.safe_load(text)) == ["config"]
    for finding in imported.report.findings:
        assert f"{finding.source}: {finding.level}: {finding.message}" in out
        assert f"{finding.level}: {Path(finding.source.file).name}:{finding.source.line}:" in text
