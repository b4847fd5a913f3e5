"""Rendering against the reference deployment's resolved values (omni_ansible_spec.md §4, §5 and §10).

Launch scripts and `docker run` lines are parsed with shlex and compared word by word, so a test fails
on a wrong value, not on a harmless change of layout.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from clusters import (IMAGE, REFERENCE_ADDRESSES, TWO_P_ONE_D_ADDRESSES, reference_1p32_1d32, reference_2p1d, shared_host,
                      spec_of)
from pdstack import profile, topology
from pdstack.rendering import ranktable, remote
from pdstack.rendering.model import FileSpec, HostPlan
from pdstack.rendering.plan import Deployment, render
from pdstack.rendering.ranktable import (DeviceAddressError, parse_device_addresses, render_global_ranktable,
                                         render_ranktables)

A = REFERENCE_ADDRESSES
DEVICES_WORD = "0123456789101112131415"
RT = "/tmp/ranktable_save_path"
PREFILL_PREFIX, DECODE_PREFIX, PROXY_PREFIX = (
    "you_name_omni_infer_prefill", "you_name_omni_infer_decode", "you_name_omni_infer_proxy")


# --- reading rendered shell ------------------------------------------------------------------------


def shell_words(line: str) -> list[str]:
    """Words and operators of one shell line, quotes removed (`2>&1` → "2", ">&", "1")."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def simple_command(line: str) -> tuple[dict[str, str], list[str]]:
    """(leading VAR=value assignments, argv) of the first simple command of a line."""
    words = shell_words(line)
    end = next((i for i, w in enumerate(words) if set(w) <= set("();<>|&")), len(words))
    words = words[:end]
    while words and words[0] in ("exec", "until", "while", "if"):
        words.pop(0)
    assignments = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        assignments[name] = value
    return assignments, words


def commands(script: str, *program: str) -> list[tuple[dict[str, str], list[str]]]:
    """Every command line of a script that runs `program` (e.g. "vllm", "serve"), in order."""
    found = []
    for line in script.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assignments, argv = simple_command(line)
        if tuple(argv[:len(program)]) == program:
            found.append((assignments, argv))
    return found


def exports(script: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in script.splitlines():
        if line.startswith("export "):
            for word in simple_command(line)[1][1:]:
                name, _, value = word.partition("=")
                env[name] = value
    return env


def options(argv: list[str]) -> dict[str, str | bool]:
    """`--name value`, `--name=value` and bare `--flag` (True); positional words are skipped."""
    opts: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if not eq:
                if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    value, i = argv[i + 1], i + 1
                else:
                    value = True
            assert name not in opts, f"{name} given twice in {argv}"
            opts[name] = value
        i += 1
    return opts


def script_of(plan: HostPlan) -> str:
    (launch,) = plan.files
    return launch.content


def serve(plan: HostPlan) -> list[tuple[dict[str, str], list[str], dict]]:
    """(per-process env, argv, options) of every `vllm serve` in the plan's launch script."""
    return [(env, argv, options(argv[3:])) for env, argv in commands(script_of(plan), "vllm", "serve")]


def kv_config(opts: dict) -> dict:
    return json.loads(opts["--kv-transfer-config"])


def proxy_lists(plan: HostPlan) -> dict:
    ((_, argv),) = commands(script_of(plan), profile.GLOBAL_PROXY)
    return options(argv[1:])


def plan_of(deployment: Deployment, key: str) -> HostPlan:
    return next(p for p in deployment.plans() if p.key == key)


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref_spec():
    return spec_of(reference_1p32_1d32())


@pytest.fixture(scope="module")
def ref(ref_spec) -> Deployment:
    return render(ref_spec)


@pytest.fixture(scope="module")
def two_p() -> Deployment:
    return render(spec_of(reference_2p1d()))


def fake_addresses(spec) -> dict[str, dict[int, str]]:
    """Made-up RoCE addresses, unique per host and device: 192.168.<host index>.<device>."""
    used = sorted({h for inst in spec.prefill + spec.decode for h in inst.hosts})
    devices = {h: inst.devices for inst in spec.prefill + spec.decode for h in inst.hosts}
    return {h: {d: f"192.168.{i}.{d}" for d in devices[h]} for i, h in enumerate(used)}


# --- containers (§5.1) -----------------------------------------------------------------------------

EXPECTED_MOUNTS = {
    "/etc/hosts:/etc/hosts", "/usr/local/Ascend/driver:/usr/local/Ascend/driver", "/usr/local/dcmi:/usr/local/dcmi",
    "/usr/local/bin/npu-smi:/usr/local/bin/npu-smi", "/etc/ascend_install.info:/etc/ascend_install.info",
    "/usr/local/sbin:/usr/local/sbin", "/etc/hccn.conf:/etc/hccn.conf", "/usr/bin/hccn_tool:/usr/bin/hccn_tool",
    "/data/log_path:/data/log_path", "/data/models/origin/bf16:/data/models/origin/bf16",
    "/tmp/scripts_path:/tmp/scripts_path", "/data:/data", "/tmp:/tmp",
    "/tmp/ranktable_save_path:/tmp/ranktable_save_path", "/usr/share/zoneinfo/Asia/Shanghai:/etc/localtime",
}


def docker_run(plan: HostPlan) -> dict:
    """The parsed `docker run` line of a plan: flags, env, mounts and the command after the image."""
    words = shlex.split(plan.container.docker_run(IMAGE))
    assert words[:5] == ["docker", "run", "-d", "--name", plan.container.name]
    at = words.index(IMAGE)
    parsed: dict = {"flags": [], "env": [], "mounts": [], "command": words[at + 1:]}
    args = iter(words[5:at])
    for word in args:
        if word == "-e":
            parsed["env"].append(next(args))
        elif word == "-v":
            parsed["mounts"].append(next(args))
        elif word in ("-u", "-w", "--label"):
            parsed["flags"].append(f"{word} {next(args)}")
        else:
            parsed["flags"].append(word)
    return parsed


@pytest.mark.parametrize("proxy_host", ["c0", "p0"])
def test_container_names_are_prefix_underscore_host(proxy_host):
    deployment = render(spec_of(reference_1p32_1d32(proxy_host=proxy_host)))
    names = {p.key: p.container.name for p in deployment.plans()}
    assert names == {
        **{f"prefill-0-p{i}": f"{PREFILL_PREFIX}_p{i}" for i in range(4)},
        **{f"decode-0-d{i}": f"{DECODE_PREFIX}_d{i}" for i in range(4)},
        f"proxy-{proxy_host}": f"{PROXY_PREFIX}_{proxy_host}",
    }


def test_docker_run_has_the_reference_flags_devices_mounts_and_env(ref):
    for plan in ref.plans():
        run = docker_run(plan)
        for flag in ("--net=host", "--privileged=true", "-u root", "-w /data", "--shm-size=500g",
                     "--device=/dev/davinci_manager", "--device=/dev/hisi_hdc", "--device=/dev/devmm_svm"):
            assert flag in run["flags"], (plan.key, flag)
        assert sorted(run["mounts"]) == sorted(EXPECTED_MOUNTS), plan.key  # each once
        env = dict(e.split("=", 1) for e in run["env"])
        assert env["RANKTABLE_SAVE_PATH"] == RT and env["LOG_PATH"] == "/data/log_path"
        assert env["PYTHONHASHSEED"] == "123"
        assert ("PROXY_NODE_PORT" in env) == (plan.role == "proxy")
        # The launch script is the main process, run by bash, and is one of the files pdstack writes.
        assert "--entrypoint=bash" in run["flags"]
        assert run["command"] == [f"/tmp/scripts_path/{plan.container.name}.sh"]
        assert plan.files[0].path == run["command"][0] and plan.files[0].mode == 0o750


def test_proxy_container_gets_its_listen_port(ref):
    env = dict(e.split("=", 1) for e in docker_run(ref.proxy)["env"])
    assert env["PROXY_NODE_PORT"] == "7000"


# --- 1P32_1D32: prefill (§5.4 "Resolved launch") -----------------------------------------------------


def test_prefill_ports_are_bound_on_p0_only(ref_spec):
    ports = {host: {u.port for u in uses} for host, uses in topology.host_ports(ref_spec).items()}
    assert ports["p0"] == {9000, 8000, profile.RAY_HEAD_PORT, profile.LLMDATADIST_ZMQ_PORT}
    assert not {"p1", "p2", "p3"} & set(ports)


def test_prefill_master_runs_one_vllm_serve_tp64_over_ray(ref):
    plan = plan_of(ref, "prefill-0-p0")
    ((env, argv, opts),) = serve(plan)
    assert argv[2] == "/data/models/origin/bf16" and env == {}
    assert opts["--tensor-parallel-size"] == "64"
    assert opts["--distributed-executor-backend"] == "ray"
    assert opts["--port"] == "9000"
    assert opts["--data-parallel-address"] == A["p0"] and opts["--data-parallel-rpc-port"] == "8000"
    assert opts["--data-parallel-size"] == "1"
    assert opts["--served-model-name"] == "deepseek" and opts["--max-model-len"] == "66560"
    assert json.loads(opts["--speculative-config"]) == {"method": "deepseek_mtp", "num_speculative_tokens": 1}
    assert kv_config(opts) == {"kv_connector": "AscendHcclConnectorV1", "kv_buffer_device": "npu",
                               "kv_role": "kv_producer", "kv_rank": 0, "engine_id": 0, "kv_parallel_size": 2}
    assert [h.port for h in plan.health] == [9000]
    env = exports(script_of(plan))
    assert env["ROLE"] == "prefill" and env["PREFILL_POD_NUM"] == "1"
    assert env["VLLM_DP_SIZE"] == "1" and env["VLLM_DP_RANK"] == "0"
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == ",".join(map(str, range(16)))
    assert env["RANK_TABLE_FILE_PATH"] == f"{RT}/global/collect_files_p/{A['p0']}/local_ranktable_merge.json"
    assert env["GLOBAL_RANK_TABLE_FILE_PATH"] == f"{RT}/global/global_ranktable_merge.json"


def test_prefill_master_starts_the_ray_head_before_vllm(ref):
    script = script_of(plan_of(ref, "prefill-0-p0"))
    ((_, head),) = commands(script, "ray", "start")
    assert "--head" in head and f"--port={profile.RAY_HEAD_PORT}" in head
    assert f"--node-ip-address={A['p0']}" in head
    lines = script.splitlines()
    ray_line = next(i for i, line in enumerate(lines) if "ray start" in line)
    serve_line = next(i for i, line in enumerate(lines) if "vllm serve" in line)
    assert ray_line < serve_line


@pytest.mark.parametrize("host, node_rank", [("p1", 1), ("p2", 2), ("p3", 3)])
def test_prefill_workers_only_join_the_ray_head_on_p0(ref, host, node_rank):
    plan = plan_of(ref, f"prefill-0-{host}")
    script = script_of(plan)
    assert serve(plan) == [] and plan.health == ()
    ((_, argv),) = commands(script, "ray", "start")
    assert "--head" not in argv
    assert options(argv[2:]) == {"--address": f"{A['p0']}:6379", "--num-gpus": "1",
                                 "--node-ip-address": A[host], "--block": True}
    env = exports(script)
    assert env["NODE_RANK"] == str(node_rank) and env["NNODES"] == "4"
    assert env["NODE_IP_LIST"] == ",".join(A[f"p{i}"] for i in range(4))


# --- 1P32_1D32: decode -------------------------------------------------------------------------------

DECODE_HOSTS = [  # host, node rank, first API port, DP offset (reference §10)
    ("d0", 0, 9100, 0),
    ("d1", 1, 9101, 16),
    ("d2", 2, 9102, 32),
    ("d3", 3, 9103, 48),
]


@pytest.mark.parametrize("host, node_rank, first_port, offset", DECODE_HOSTS)
def test_decode_host_runs_16_dp_servers(ref, host, node_rank, first_port, offset):
    plan = plan_of(ref, f"decode-0-{host}")
    servers = serve(plan)
    ports = list(range(first_port, first_port + 16))
    assert [opts["--port"] for _, _, opts in servers] == [str(p) for p in ports]
    assert [h.port for h in plan.health] == ports
    # start_api_servers.py sets VLLM_DP_RANK = VLLM_DP_RANK_LOCAL = r + offset // tp.
    assert [env for env, _, _ in servers] == [
        {"VLLM_DP_RANK": str(offset + r), "VLLM_DP_RANK_LOCAL": str(offset + r)} for r in range(16)]
    for _, argv, opts in servers:
        assert argv[2] == "/data/models/origin/bf16"
        assert opts["--tensor-parallel-size"] == "1"
        assert opts["--data-parallel-address"] == A["d0"] and opts["--data-parallel-rpc-port"] == "8100"
        assert "--distributed-executor-backend" not in opts
        assert kv_config(opts) == {"kv_connector": "AscendHcclConnectorV1", "kv_buffer_device": "npu",
                                   "kv_role": "kv_consumer", "kv_rank": 1, "engine_id": 1, "kv_parallel_size": 2}
    env = exports(script_of(plan))
    assert env["ROLE"] == "decode" and env["VLLM_DP_SIZE"] == "64" and env["SERVER_OFFSET"] == str(offset)
    assert env["VLLM_DP_MASTER_IP"] == A["d0"] and env["VLLM_DP_MASTER_PORT"] == "8100"
    assert env["RANK_TABLE_FILE_PATH"] == f"{RT}/global/collect_files_d/{A['d0']}/local_ranktable_merge.json"


def test_decode_dp_ranks_cover_0_to_63_once(ref):
    ranks = [int(env["VLLM_DP_RANK"]) for _, plans in ref.decode for p in plans for env, _, _ in serve(p)]
    assert ranks == list(range(64))


@pytest.mark.parametrize("host, first_port, offset", [("d0", 9100, 0), ("d1", 9101, 8), ("d3", 9103, 24)])
def test_decode_with_tensor_parallel_2_runs_8_servers_per_host(host, first_port, offset):
    raw = reference_1p32_1d32()
    raw["pdstack:decode"][0]["tensorParallel"] = 2
    deployment = render(spec_of(raw))
    servers = serve(plan_of(deployment, f"decode-0-{host}"))
    assert [opts["--port"] for _, _, opts in servers] == [str(first_port + r) for r in range(8)]
    # start_api_servers.py: rank = r + server_offset // tp, server_offset counting devices (16 per host).
    assert [env["VLLM_DP_RANK"] for env, _, _ in servers] == [str(offset + r) for r in range(8)]
    assert {opts["--tensor-parallel-size"] for _, _, opts in servers} == {"2"}
    env = exports(script_of(plan_of(deployment, f"decode-0-{host}")))
    assert env["VLLM_DP_SIZE"] == "32"
    # SERVER_OFFSET counts devices, as the reference's config_dict does: twice the DP offset at TP 2.
    assert env["SERVER_OFFSET"] == str(offset * 2)
    assert len(deployment.decode_servers) == 32


# --- 1P32_1D32: proxy (§5.6) -----------------------------------------------------------------------


@pytest.mark.parametrize("proxy_host", ["c0", "p0"])
def test_proxy_server_lists(proxy_host):
    deployment = render(spec_of(reference_1p32_1d32(proxy_host=proxy_host)))
    decode = [f"{A[h]}:{port}" for h, _, first, _ in DECODE_HOSTS for port in range(first, first + 16)]
    assert deployment.prefill_servers == (f"{A['p0']}:9000",)
    assert list(deployment.decode_servers) == decode and len(decode) == 64
    opts = proxy_lists(deployment.proxy)
    assert opts["--listen-port"] == "7000"
    assert opts["--prefill-servers-list"] == f"{A['p0']}:9000"
    assert opts["--decode-servers-list"].split(",") == decode
    assert deployment.proxy.host.name == proxy_host
    assert [(h.port, h.path) for h in deployment.proxy.health] == [(7000, None)]


# --- 2P1D (§4) -------------------------------------------------------------------------------------

B = TWO_P_ONE_D_ADDRESSES
PREFILL_2P = [  # instance, host, API port, DP RPC port, kv rank
    ("prefill-0", "p0", 9000, 8000, 0),
    ("prefill-1", "p1", 9001, 8001, 1),
]


@pytest.mark.parametrize("instance, host, api_port, rpc_port, kv_rank", PREFILL_2P)
def test_2p1d_prefill_instances(two_p, instance, host, api_port, rpc_port, kv_rank):
    plan = plan_of(two_p, f"{instance}-{host}")
    ((_, _, opts),) = serve(plan)
    assert opts["--port"] == str(api_port) and opts["--data-parallel-rpc-port"] == str(rpc_port)
    assert opts["--data-parallel-address"] == B[host] and opts["--tensor-parallel-size"] == "16"
    assert "--distributed-executor-backend" not in opts
    kv = kv_config(opts)
    assert (kv["kv_role"], kv["kv_rank"], kv["engine_id"], kv["kv_parallel_size"]) == ("kv_producer", kv_rank, kv_rank, 3)
    script = script_of(plan)
    assert commands(script, "ray") == []
    env = exports(script)
    assert env["PREFILL_POD_NUM"] == "2"
    assert env["RANK_TABLE_FILE_PATH"] == f"{RT}/prefill_config/local_ranktable_{B[host]}_{DEVICES_WORD}.json"
    assert [h.port for h in plan.health] == [api_port]


@pytest.mark.parametrize("host, first_port, offset", [("d0", 9100, 0), ("d1", 9101, 16)])
def test_2p1d_decode(two_p, host, first_port, offset):
    plan = plan_of(two_p, f"decode-0-{host}")
    servers = serve(plan)
    assert [opts["--port"] for _, _, opts in servers] == [str(p) for p in range(first_port, first_port + 16)]
    assert [env["VLLM_DP_RANK"] for env, _, _ in servers] == [str(offset + r) for r in range(16)]
    for _, _, opts in servers:
        kv = kv_config(opts)
        assert (kv["kv_role"], kv["kv_rank"], kv["engine_id"], kv["kv_parallel_size"]) == ("kv_consumer", 2, 2, 3)
    env = exports(script_of(plan))
    assert env["VLLM_DP_SIZE"] == "32" and env["SERVER_OFFSET"] == str(offset) and env["PREFILL_POD_NUM"] == "2"


def test_2p1d_proxy_lists(two_p):
    opts = proxy_lists(two_p.proxy)
    assert opts["--prefill-servers-list"] == f"{B['p0']}:9000,{B['p1']}:9001"
    assert len(opts["--decode-servers-list"].split(",")) == 32
    assert two_p.proxy.container.name == f"{PROXY_PREFIX}_p0"


# --- ranktables (§5.3) -----------------------------------------------------------------------------


def local_file(role: str, address: str) -> str:
    sub = "prefill_config" if role == "prefill" else "decode_config"
    return f"{RT}/{sub}/local_ranktable_{address}_{DEVICES_WORD}.json"


def files_by_path(files) -> dict[str, dict]:
    return {f.path: json.loads(f.content) for f in files}


def server(address: str, device_ips: dict[int, str], first_rank: int) -> dict:
    return {"server_id": address, "server_ip": address,
            "device": [{"device_id": str(d), "device_ip": device_ips[d], "rank_id": str(first_rank + d)}
                       for d in range(16)]}


@pytest.mark.parametrize("host, role", [(f"p{i}", "prefill") for i in range(4)] + [(f"d{i}", "decode") for i in range(4)])
def test_local_ranktable_of_each_host(ref_spec, host, role):
    addrs = fake_addresses(ref_spec)
    files = files_by_path(render_ranktables(ref_spec, addrs)[host])
    assert files[local_file(role, A[host])] == {
        "version": "1.0", "status": "completed", "group_id": "0", "server_count": "1",
        "server_list": [server(A[host], addrs[host], 0)]}


# Addresses whose string order differs from the host order: the prefill runtime re-sorts a group's
# non-first servers by address string, so ranks must follow p0, p3 (…100), p2 (…11), p1 (…9).
SHUFFLED = {"p0": "10.0.0.10", "p1": "10.0.0.9", "p2": "10.0.0.11", "p3": "10.0.0.100",
            "d0": "10.0.1.10", "d1": "10.0.1.9", "d2": "10.0.1.11", "d3": "10.0.1.100"}


def test_merged_prefill_ranktable_is_master_first_then_by_address_string():
    spec = spec_of(reference_1p32_1d32(addresses=SHUFFLED))
    addrs = fake_addresses(spec)
    order = ["p0", "p3", "p2", "p1"]
    assert ranktable.ordered_hosts(spec, "prefill", spec.prefill[0]) == tuple(order)
    merged = files_by_path(render_ranktables(spec, addrs)["p2"])[
        f"{RT}/global/collect_files_p/{SHUFFLED['p0']}/local_ranktable_merge.json"]
    assert merged == {"version": "1.0", "status": "completed", "group_id": "0", "server_count": 4,
                      "server_list": [server(SHUFFLED[h], addrs[h], 16 * n) for n, h in enumerate(order)]}
    ranks = [int(d["rank_id"]) for s in merged["server_list"] for d in s["device"]]
    assert ranks == list(range(64))
    # The Ray side numbers its nodes the same way.
    deployment = render(spec)
    for n, host in enumerate(order):
        env = exports(script_of(plan_of(deployment, f"prefill-0-{host}")))
        assert env["NODE_RANK"] == str(n)
        assert env["NODE_IP_LIST"] == ",".join(SHUFFLED[h] for h in order)


def test_merged_decode_ranktable_keeps_config_order():
    spec = spec_of(reference_1p32_1d32(addresses=SHUFFLED))
    addrs = fake_addresses(spec)
    merged = files_by_path(render_ranktables(spec, addrs)["d3"])[
        f"{RT}/global/collect_files_d/{SHUFFLED['d0']}/local_ranktable_merge.json"]
    order = ["d0", "d1", "d2", "d3"]  # = DP offsets 0/16/32/48
    assert merged["server_count"] == 4
    assert merged["server_list"] == [server(SHUFFLED[h], addrs[h], 16 * n) for n, h in enumerate(order)]


def test_global_ranktable_1p32_1d32(ref_spec):
    addrs = fake_addresses(ref_spec)
    global_file = render_global_ranktable(ref_spec, addrs)
    assert global_file.path == f"{RT}/global/global_ranktable_merge.json"
    doc = json.loads(global_file.content)
    assert doc["version"] == "1.0" and doc["status"] == "completed"
    groups = doc["server_group_list"]
    assert [(g["group_id"], g["server_count"]) for g in groups] == [("0", 4), ("1", 4)]
    assert [s["server_ip"] for s in groups[0]["server_list"]] == [A[f"p{i}"] for i in range(4)]
    assert [s["server_ip"] for s in groups[1]["server_list"]] == [A[f"d{i}"] for i in range(4)]
    assert groups[1]["server_list"][2] == server(A["d2"], addrs["d2"], 32)
    # One file for every host: it is not among any container's own ranktables.
    assert not any(f.path == global_file.path for fs in render_ranktables(ref_spec, addrs).values() for f in fs)


def test_global_ranktable_2p1d():
    spec = spec_of(reference_2p1d())
    addrs = fake_addresses(spec)
    doc = json.loads(render_global_ranktable(spec, addrs).content)
    groups = doc["server_group_list"]
    assert [(g["group_id"], g["server_count"]) for g in groups] == [("0", 1), ("1", 1), ("2", 2)]
    assert groups[0]["server_list"] == [server(B["p0"], addrs["p0"], 0)]
    assert groups[1]["server_list"] == [server(B["p1"], addrs["p1"], 0)]
    assert groups[2]["server_list"] == [server(B["d0"], addrs["d0"], 0), server(B["d1"], addrs["d1"], 16)]


GLOBAL = f"{RT}/global/global_ranktable_merge.json"


@pytest.mark.parametrize("raw, expected", [
    (reference_1p32_1d32(), {
        **{f"p{i}": {local_file("prefill", A[f"p{i}"]),
                     f"{RT}/global/collect_files_p/{A['p0']}/local_ranktable_merge.json", GLOBAL} for i in range(4)},
        **{f"d{i}": {local_file("decode", A[f"d{i}"]),
                     f"{RT}/global/collect_files_d/{A['d0']}/local_ranktable_merge.json", GLOBAL} for i in range(4)},
    }),
    (reference_2p1d(), {
        "p0": {local_file("prefill", B["p0"]), GLOBAL},
        "p1": {local_file("prefill", B["p1"]), GLOBAL},
        "d0": {local_file("decode", B["d0"]), f"{RT}/global/collect_files_d/{B['d0']}/local_ranktable_merge.json", GLOBAL},
        "d1": {local_file("decode", B["d1"]), f"{RT}/global/collect_files_d/{B['d0']}/local_ranktable_merge.json", GLOBAL},
    }),
], ids=["1P32_1D32", "2P1D"])
def test_each_host_gets_exactly_the_ranktables_its_processes_read(raw, expected):
    spec = spec_of(raw)
    # The global ranktable is written once per host (GlobalRanktable), the rest per container.
    own = {host: paths - {GLOBAL} for host, paths in expected.items()}
    files = render_ranktables(spec, fake_addresses(spec))
    assert {host: {f.path for f in fs} for host, fs in files.items()} == own  # nothing for the proxy
    for plan in render(spec).plans():
        if plan.role == "proxy":
            assert plan.ranktable_paths == ()
            continue
        assert set(plan.ranktable_paths) == own[plan.host.name]
        env = exports(script_of(plan))
        assert env["RANK_TABLE_FILE_PATH"] in plan.ranktable_paths
        assert env["GLOBAL_RANK_TABLE_FILE_PATH"] == GLOBAL


def test_a_host_in_both_roles_gets_the_ranktables_of_both():
    spec = spec_of(shared_host())
    addrs = {"n0": {d: f"192.168.0.{d}" for d in range(16)}, "n1": {d: f"192.168.1.{d}" for d in range(8, 16)}}
    files = render_ranktables(spec, addrs)
    plans = [p for p in render(spec).plans() if p.host.name == "n0" and p.role != "proxy"]
    assert {p.key for p in plans} == {"prefill-0-n0", "decode-0-n0"}
    assert sorted(f.path for f in files["n0"]) == sorted({path for p in plans for path in p.ranktable_paths})
    docs = files_by_path(files["n0"])
    prefill = docs[f"{RT}/prefill_config/local_ranktable_10.0.3.1_01234567.json"]["server_list"][0]["device"]
    decode = docs[f"{RT}/decode_config/local_ranktable_10.0.3.1_89101112131415.json"]["server_list"][0]["device"]
    assert [(d["device_id"], d["rank_id"]) for d in prefill] == [(str(i), str(i)) for i in range(8)]
    assert [(d["device_id"], d["rank_id"], d["device_ip"]) for d in decode] == [
        (str(8 + i), str(i), f"192.168.0.{8 + i}") for i in range(8)]


def test_parse_device_addresses_of_good_output():
    out = "".join(f"{d} ipaddr:10.78.{d}.1\n" for d in range(16)) + "\nwarning: something unrelated\n"
    assert parse_device_addresses("d0", tuple(range(16)), out) == {d: f"10.78.{d}.1" for d in range(16)}


def test_parse_device_addresses_names_the_host_and_the_missing_device():
    out = "".join(f"{d} ipaddr:10.78.{d}.1\n" for d in range(16) if d != 7)
    with pytest.raises(DeviceAddressError, match=r"host d2\b.*\[7\]"):
        parse_device_addresses("d2", tuple(range(16)), out)


def test_parse_device_addresses_reports_hccn_tool_errors():
    out = "0 ipaddr:10.78.0.1\n1 Error: device 1 does not exist, please check hccn.conf\n"
    with pytest.raises(DeviceAddressError) as caught:
        parse_device_addresses("p3", (0, 1), out)
    assert "host p3" in str(caught.value) and "device 1" in str(caught.value)
    assert "does not exist" in str(caught.value)


FAKE_HCCN_TOOL = """#!/bin/bash
# fake hccn_tool: `hccn_tool -i <device> -ip -g`; device 5 fails the way a device without an address does
if [ "$2" = 5 ]; then echo "Command execution failed, error code: -2" >&2; exit 1; fi
echo "ipaddr:192.168.50.$2"
echo "netmask:255.255.255.0"
"""


def fake_bin(tmp_path: Path, **tools: str) -> dict[str, str]:
    """An environment whose PATH finds the given fake tools first."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in tools.items():
        tool = bin_dir / name
        tool.write_text(text)
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_read_devices_command_output_parses(tmp_path):
    env = fake_bin(tmp_path, hccn_tool=FAKE_HCCN_TOOL)
    devices = (0, 1, 2, 3)
    out = subprocess.run(["bash", "-c", ranktable.read_devices_command(devices)], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert parse_device_addresses("d0", devices, out) == {d: f"192.168.50.{d}" for d in devices}
    out = subprocess.run(["bash", "-c", ranktable.read_devices_command((4, 5, 6))], env=env,
                         capture_output=True, text=True, check=True).stdout
    with pytest.raises(DeviceAddressError, match=r"host d1\b.*device 5: hccn_tool said 'Command execution failed"):
        parse_device_addresses("d1", (4, 5, 6), out)


# --- invariance -----------------------------------------------------------------------------------


def test_host_map_order_does_not_matter():
    raw = reference_1p32_1d32()
    reordered = copy.deepcopy(raw)
    reordered["pdstack:hosts"] = dict(reversed(list(raw["pdstack:hosts"].items())))
    a, b = spec_of(raw), spec_of(reordered)
    assert render(a) == render(b)
    assert render_ranktables(a, fake_addresses(a)) == render_ranktables(b, fake_addresses(b))


@pytest.mark.parametrize("devices", [list(range(16)), "0-7,8-15", "15,14,13,12,11,10,9,8,7,6,5,4,3,2,1,0"])
def test_device_spelling_does_not_matter(devices):
    raw = reference_1p32_1d32()
    for block in ("pdstack:prefill", "pdstack:decode"):
        raw[block][0]["devices"] = devices
    assert render(spec_of(raw)) == render(spec_of(reference_1p32_1d32()))


def changed_parts(before: Deployment, after: Deployment) -> dict[str, set[str]]:
    """Per plan key, the names of the trigger parts that differ."""
    old = {p.key: dict(p.parts) for p in before.plans()}
    new = {p.key: dict(p.parts) for p in after.plans()}
    assert old.keys() == new.keys()
    changed = {k: {name for name in old[k].keys() | new[k].keys() if old[k].get(name) != new[k].get(name)}
               for k in old}
    return {k: names for k, names in changed.items() if names}


def with_engine(raw: dict, block: str, **engine) -> dict:
    raw = copy.deepcopy(raw)
    raw[block][0]["engine"] = engine
    return raw


def test_a_decode_engine_setting_changes_only_decode_args():
    raw = reference_1p32_1d32()
    before, after = render(spec_of(raw)), render(spec_of(with_engine(raw, "pdstack:decode", maxNumSeqs=8)))
    assert changed_parts(before, after) == {f"decode-0-d{i}": {"args"} for i in range(4)}
    for old, new in zip(before.plans(), after.plans()):
        assert (old.files == new.files) == (old.role != "decode")
        assert old.container == new.container


def test_a_prefill_engine_setting_changes_only_the_prefill_master_args():
    raw = reference_1p32_1d32()
    after = render(spec_of(with_engine(raw, "pdstack:prefill", maxNumSeqs=32)))
    assert changed_parts(render(spec_of(raw)), after) == {"prefill-0-p0": {"args"}}


@pytest.mark.parametrize("proxy_host", ["c0", "p0"])
def test_the_proxy_port_changes_only_the_proxy(proxy_host):
    raw = reference_1p32_1d32(proxy_host=proxy_host)
    moved = copy.deepcopy(raw)
    moved["pdstack:proxy"]["port"] = 7100
    before, after = render(spec_of(raw)), render(spec_of(moved))
    changed = changed_parts(before, after)
    assert set(changed) == {f"proxy-{proxy_host}"} and "args" in changed[f"proxy-{proxy_host}"]
    assert [p for p in before.plans() if p.role != "proxy"] == [p for p in after.plans() if p.role != "proxy"]


# --- remote.py commands ----------------------------------------------------------------------------


def rebased(files, root: Path) -> tuple[FileSpec, ...]:
    return tuple(dataclasses.replace(f, path=f"{root}{f.path}") for f in files)


def run_bash(script: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, **kwargs)


def test_write_files_script_writes_rendered_files_byte_for_byte(tmp_path, ref_spec):
    deployment = render(ref_spec)
    rendered = [f for p in deployment.plans() for f in p.files]
    rendered += list(render_ranktables(ref_spec, fake_addresses(ref_spec))["p0"])
    tricky = FileSpec("/odd dir/it's \"quoted\".txt",
                      "  indented first line\nquotes ' \" and $HOME `date` $(whoami) \\ backslash\n\ttab\n"
                      "PDSTACK_EOF_1\nEOF\nunicode: ✓\n\n  blank line above, spaces after   \n", 0o600)
    packed = dataclasses.replace(tricky, path="/odd dir/packed.txt", compressed=True)
    files = rebased((*rendered, tricky, packed), tmp_path)
    assert {f.compressed for f in files} == {True, False}  # ranktables travel compressed, scripts not
    script = remote.write_files_script(files, remote.FileOwner(str(tmp_path / "records"), "p/s/x-files"))
    for _ in range(2):  # idempotent: a second run rewrites the same files
        result = run_bash(script)
        assert result.returncode == 0, result.stderr
        for f in files:
            assert Path(f.path).read_text() == f.content, f.path
            assert stat.S_IMODE(Path(f.path).stat().st_mode) == f.mode, f.path
    assert not list(tmp_path.rglob("*.pdstack-tmp"))


def test_compressed_files_keep_their_bulk_out_of_the_script_and_it_stays_the_same(ref_spec, monkeypatch):
    """What is sent is kept (twice) in the Pulumi state and compared by every preview: a ranktable
    goes compressed, and the same file gives the same script whenever it is rendered."""
    import gzip
    rt = render_ranktables(ref_spec, fake_addresses(ref_spec))["p0"][0]
    assert rt.compressed
    owner = remote.FileOwner("/r", "p/s/x-files")
    scripts = []
    for now in (1_000_000_000, 2_000_000_000):  # gzip stamps the time unless told not to
        monkeypatch.setattr(gzip.time, "time", lambda now=now: now)
        scripts.append(remote.write_files_script((rt,), owner))
    assert scripts[0] == scripts[1]
    plain = remote.write_files_script((dataclasses.replace(rt, compressed=False),), owner)
    assert rt.content.rstrip("\n") in plain and '"device_ip"' not in scripts[0]
    assert len(plain) - len(scripts[0]) > len(rt.content) / 2, (len(plain), len(scripts[0]))


def test_write_files_script_refuses_content_holding_its_marker():
    with pytest.raises(ValueError, match="PDSTACK_EOF_0"):
        remote.write_files_script((FileSpec("/x", "a\nPDSTACK_EOF_0\nb\n"),), remote.FileOwner("/r", "o"))


def test_delete_files_command_removes_only_those_files(tmp_path):
    root = tmp_path / "root"
    gone = [root / "a" / "f1", root / "b" / "f2", root / "c" / "d" / "f3", root / "e e" / "it's"]
    kept = [root / "keep.txt", root / "b" / "other"]
    for path in gone + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    owner = remote.FileOwner(str(root / "records"), "p/s/x-files")
    command = remote.delete_files_command(tuple(str(p) for p in gone) + (str(root / "never-written"),), owner)
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for p in kept)
    # Directories left empty are removed; the others stay.
    assert not (root / "a").exists() and not (root / "c").exists() and not (root / "e e").exists()
    assert (root / "b").is_dir()


def run_ok(script: str) -> None:
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_file_is_deleted_only_by_its_last_writer(tmp_path):
    """A host renamed in place: the new resource writes the same ranktable path before the old
    resource is deleted; the old delete must leave the new file alone."""
    records = str(tmp_path / "records")
    shared, old_only = tmp_path / "rt" / "local_ranktable.json", tmp_path / "scripts" / "old_host.sh"
    old, new = remote.FileOwner(records, "p/s/d0-old-files"), remote.FileOwner(records, "p/s/d0-new-files")
    run_ok(remote.write_files_script((FileSpec(str(shared), "old\n"), FileSpec(str(old_only), "x\n")), old))
    run_ok(remote.write_files_script((FileSpec(str(shared), "new\n"),), new))
    run_ok(remote.delete_files_command((str(shared), str(old_only)), old))
    assert shared.read_text() == "new\n"
    assert not old_only.exists() and not old_only.parent.exists()
    run_ok(remote.delete_files_command((str(shared),), new))
    assert not shared.exists() and not (tmp_path / "rt").exists()
    assert not (tmp_path / "records").exists()  # nothing recorded any more: the record directory goes too


def test_a_rewrite_removes_the_files_at_paths_it_no_longer_writes(tmp_path):
    """A new device list renames a container's local ranktable: the old file must not stay behind."""
    owner = remote.FileOwner(str(tmp_path / "records"), "p/s/d0-h5-files")
    before = tmp_path / "rt" / "local_ranktable_10.0.0.5_0123.json"
    after = tmp_path / "rt" / "local_ranktable_10.0.0.5_01.json"
    script = tmp_path / "scripts" / "d0.sh"
    run_ok(remote.write_files_script((FileSpec(str(script), "a\n"), FileSpec(str(before), "b\n")), owner))
    run_ok(remote.write_files_script((FileSpec(str(script), "a2\n"), FileSpec(str(after), "c\n")), owner))
    assert not before.exists()
    assert after.read_text() == "c\n" and script.read_text() == "a2\n"


def test_a_rewrite_leaves_a_dropped_path_that_another_writer_took_over(tmp_path):
    records = str(tmp_path / "records")
    mine, theirs = remote.FileOwner(records, "p/s/a-files"), remote.FileOwner(records, "p/s/b-files")
    path = tmp_path / "rt" / "global.json"
    run_ok(remote.write_files_script((FileSpec(str(path), "a\n"),), mine))
    run_ok(remote.write_files_script((FileSpec(str(path), "b\n"),), theirs))
    run_ok(remote.write_files_script((), mine))
    assert path.read_text() == "b\n"


def all_plans() -> list[HostPlan]:
    return [*render(spec_of(reference_1p32_1d32())).plans(), *render(spec_of(reference_2p1d())).plans()]


def test_rendered_shell_is_valid_bash(tmp_path):
    scripts = {}
    for plan in all_plans():
        scripts[f"{plan.key}.launch"] = script_of(plan)
        scripts[f"{plan.key}.readiness"] = remote.readiness_script(plan, 900, 2)
        scripts[f"{plan.key}.run"] = remote.run_container_command(plan, IMAGE, "p/s/decode")
        scripts[f"{plan.key}.delete"] = remote.delete_files_command(
            tuple(f.path for f in plan.files) + plan.ranktable_paths, remote.FileOwner(plan.records, "p/s/x"))
    scripts["write"] = remote.write_files_script(tuple(f for p in all_plans() for f in p.files),
                                                 remote.FileOwner("/r", "p/s/x"))
    for name, text in scripts.items():
        path = tmp_path / name
        path.write_text(text)
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr}"


RECORDING_DOCKER = """#!/bin/bash
echo "$*" >> "$DOCKER_LOG"
case "$1" in
  ps) printf '%s\\n' $FAKE_SLOT_NAMES ;;
  inspect) echo sha256:new ;;
esac
"""


def test_run_container_command_replaces_other_containers_of_its_slot_then_runs_the_rendered_docker_run(ref, tmp_path):
    """A renamed host's new container starts while the old one (another name, same ports) still runs:
    the create stops and removes it first, and leaves the container of its own name to `rm -f`."""
    plan = plan_of(ref, "decode-0-d1")
    (tmp_path / "docker").write_text(RECORDING_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    log = tmp_path / "calls"
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", DOCKER_LOG=str(log),
               FAKE_SLOT_NAMES=f"omni_decode_d1-old {plan.container.name}")
    result = subprocess.run(["bash", "-c", remote.run_container_command(plan, IMAGE, "p/s/decode")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0 and result.stdout == "sha256:new\n", result.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "version"  # docker answers: else the command fails naming the host
    calls = calls[1:]
    assert calls[0] == "ps -a --filter label=io.pdstack.slot=p/s/decode --format {{.Names}}"
    assert calls[1:4] == [f"stop -t {remote.STOP_GRACE_SECONDS} omni_decode_d1-old", "rm -f omni_decode_d1-old",
                          f"rm -f {plan.container.name}"]
    run = shlex.split(plan.container.docker_run(IMAGE, ((remote.SLOT_LABEL, "p/s/decode"),)))
    assert run[run.index(IMAGE) - 2:run.index(IMAGE)] == ["--label", "io.pdstack.slot=p/s/decode"]
    assert calls[4] == " ".join(run[1:])
    assert calls[5] == f"inspect -f {{{{.Id}}}} {plan.container.name}"


FAKE_DOCKER = """#!/bin/bash
case "$1" in
  inspect) echo "${FAKE_STATE:-running}" ;;
  logs) echo "the engine's last log line" ;;
esac
"""
FAKE_CURL = """#!/bin/bash
printf '%s' "${FAKE_HTTP:-200}"
"""


@pytest.mark.parametrize("key, state, http, ok, message", [
    ("decode-0-d1", "running", "200", True, "you_name_omni_infer_decode_d1 ready"),
    ("proxy-c0", "running", "404", True, "ready"),  # nginx without /health: any answer will do
    ("prefill-0-p1", "running", "000", True, "ready"),  # Ray worker: no port, must keep running
    ("prefill-0-p0", "running", "503", False, "did not become healthy within 0 s"),
    ("decode-0-d0", "exited", "200", False, "host d0: container you_name_omni_infer_decode_d0 is exited"),
], ids=["decode-healthy", "proxy-any-answer", "ray-worker-running", "prefill-timeout", "decode-exited"])
def test_readiness_script(tmp_path, ref, key, state, http, ok, message):
    env = fake_bin(tmp_path, docker=FAKE_DOCKER, curl=FAKE_CURL)
    env.update(FAKE_STATE=state, FAKE_HTTP=http)
    result = run_bash(remote.readiness_script(plan_of(ref, key), 0 if not ok else 30, 0), env=env, timeout=30)
    assert (result.returncode == 0) == ok, result.stderr
    assert message in (result.stdout if ok else result.stderr)
    if not ok:
        assert "the engine's last log line" in result.stderr


def test_pulling_on_a_host_whose_docker_is_down_names_the_host_and_dockers_own_words(tmp_path):
    (tmp_path / "docker").write_text("#!/bin/bash\necho 'Cannot connect to the Docker daemon at "
                                     "unix:///run/docker.sock. Is the docker daemon running?' >&2\nexit 1\n")
    (tmp_path / "docker").chmod(0o755)
    result = subprocess.run(["bash", "-c", remote.pull_image_command(IMAGE, "host5")], capture_output=True, text=True,
                            env=dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}"))
    assert result.returncode == 1
    assert result.stderr == ("pdstack: host host5: cannot use docker: Cannot connect to the Docker daemon at "
                             "unix:///run/docker.sock. Is the docker daemon running?\n")
