"""The config layer: a stack's `pdstack:*` config → ClusterSpec, or ConfigError naming every bad key."""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdstack.config.model import (
    ClusterSpec, ContainerNames, DecodeInstance, EngineSettings, Host, Model, Paths, Ports, PrefillInstance,
    Proxy, Readiness, SshSettings,
)
from pdstack.config.parse import ConfigError, check_local_files, parse_cluster

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"

BASE: dict[str, Any] = {
    "pdstack:image": "quay.io/ascend/vllm-ascend:v0.9.0-dsv3.2",
    "pdstack:ssh": {"user": "root", "privateKeyPath": "~/.ssh/my_key"},
    "pdstack:model": {"path": "/data/models/origin/bf16", "servedName": "deepseek"},
    "pdstack:paths": {"logs": "/data/log_path", "scripts": "/tmp/scripts_path",
                      "ranktables": "/tmp/ranktable_save_path"},
    "pdstack:containers": {"prefill": "pf", "decode": "dc", "proxy": "px"},
    "pdstack:hosts": {
        "p0": {"address": "10.0.0.1"},
        "p1": {"address": "10.0.0.2", "user": "admin", "port": 2222},
        "p2": {"address": "10.0.0.3", "privateKey": PEM, "hostKey": ED25519},
        "d0": {"address": "10.0.0.5"},
        "d1": {"address": "10.0.0.6"},
    },
    "pdstack:prefill": [
        {"name": "prefill-0", "hosts": ["p0", "p1"], "devices": "0-15",
         "engine": {"maxModelLen": 32768, "extraArgs": "--enforce-eager --foo 'a b'", "env": {"B": 1, "A": True}}},
        {"name": "prefill-1", "hosts": ["p2"], "devices": [3, 1, 2, 0]},
    ],
    "pdstack:decode": [
        {"name": "decode-0", "hosts": ["d0", "d1"], "devices": "0-3,8-11", "tensorParallel": 2,
         "engine": {"maxNumSeqs": 8, "gpuMemoryUtilization": 0.9, "extraArgs": ["--x", "1"]}},
    ],
    "pdstack:proxy": {"host": "p0", "port": 7100, "decodePolicy": "round_robin"},
    "pdstack:ports": {"masterBase": 8000, "apiBase": 9000},
    "pdstack:readiness": {"timeoutSeconds": 600, "intervalSeconds": 5},
    "aws:region": "ignored: another namespace",
}

KEY_PATH = SshSettings(user="root", private_key_path="~/.ssh/my_key")
EXPECTED = ClusterSpec(
    image="quay.io/ascend/vllm-ascend:v0.9.0-dsv3.2",
    ssh=KEY_PATH,
    model=Model(),
    paths=Paths(),
    containers=ContainerNames(prefill="pf", decode="dc", proxy="px"),
    hosts=(
        Host("d0", "10.0.0.5", KEY_PATH),
        Host("d1", "10.0.0.6", KEY_PATH),
        Host("p0", "10.0.0.1", KEY_PATH),
        Host("p1", "10.0.0.2", SshSettings(user="admin", port=2222, private_key_path="~/.ssh/my_key")),
        Host("p2", "10.0.0.3", SshSettings(user="root", private_key=PEM, host_key=ED25519)),
    ),
    prefill=(
        PrefillInstance("prefill-0", ("p0", "p1"), tuple(range(16)), EngineSettings(
            max_model_len=32768, max_num_seqs=16, gpu_memory_utilization=0.92,
            extra_args=("--enforce-eager", "--foo", "a b"), env=(("A", "true"), ("B", "1")))),
        PrefillInstance("prefill-1", ("p2",), (0, 1, 2, 3), EngineSettings(66560, 16, 0.92)),
    ),
    decode=(
        DecodeInstance("decode-0", ("d0", "d1"), (0, 1, 2, 3, 8, 9, 10, 11), 2, EngineSettings(
            max_model_len=66560, max_num_seqs=8, gpu_memory_utilization=0.9, extra_args=("--x", "1"))),
    ),
    proxy=Proxy(host="p0", port=7100, decode_policy="round_robin"),
    ports=Ports(),
    readiness=Readiness(timeout_seconds=600, interval_seconds=5),
)

MINIMAL: dict[str, Any] = {
    "pdstack:image": "vllm-ascend",
    "pdstack:ssh": {"privateKeyPath": "/keys/id"},
    "pdstack:hosts": {"p0": {"address": "10.0.0.1"}, "d0": {"address": "10.0.0.2"}},
    "pdstack:prefill": [{"name": "prefill-0", "hosts": ["p0"], "devices": "0-15"}],
    "pdstack:decode": [{"name": "decode-0", "hosts": ["d0"], "devices": "0-15"}],
    "pdstack:proxy": {"host": "p0"},
}


def config(*mutations: Callable[[dict], None], base: dict | None = None) -> dict[str, Any]:
    raw = copy.deepcopy(BASE if base is None else base)
    for mutate in mutations:
        mutate(raw)
    return raw


def _walk(raw: dict, path: tuple) -> tuple[Any, Any]:
    node = raw
    for step in path[:-1]:
        node = node[step]
    return node, path[-1]


def put(*path_and_value: Any) -> Callable[[dict], None]:
    *path, value = path_and_value

    def mutate(raw: dict) -> None:
        node, last = _walk(raw, tuple(path))
        node[last] = copy.deepcopy(value)
    return mutate


def drop(*path: Any) -> Callable[[dict], None]:
    def mutate(raw: dict) -> None:
        node, last = _walk(raw, path)
        del node[last]
    return mutate


def parse_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_cluster(raw)
    return str(caught.value)


# --- valid configs --------------------------------------------------------------------------------


def test_full_config_parses_to_expected_spec():
    assert parse_cluster(config()) == EXPECTED


def test_minimal_config_gets_defaults():
    spec = parse_cluster(config(base=MINIMAL))
    assert spec.model == Model() and spec.paths == Paths() and spec.containers == ContainerNames()
    assert spec.ports == Ports() and spec.readiness == Readiness() and spec.proxy == Proxy(host="p0")
    assert spec.prefill[0].engine == EngineSettings(66560, 16, 0.92)
    assert spec.decode[0].engine == EngineSettings(66560, 4, 0.95)
    assert spec.decode[0].tensor_parallel == 1
    assert [h.name for h in spec.hosts] == ["d0", "p0"]
    assert spec.host("p0").ssh == SshSettings(private_key_path="/keys/id")


def test_json_strings_parse_like_values():
    as_json = {k: (v if k in ("pdstack:image", "aws:region") else json.dumps(v)) for k, v in BASE.items()}
    assert parse_cluster(as_json) == EXPECTED


@pytest.mark.parametrize("devices", ["0-3", "0,1,2,3", [0, 1, 2, 3], [3, 2, 1, 0], " 0-1 , 2-3 ", "0-1,2,3"])
def test_device_spellings_give_equal_specs(devices):
    raw = config(put("pdstack:prefill", 1, "devices", devices))
    assert parse_cluster(raw) == EXPECTED


def test_host_order_does_not_matter():
    raw = config()
    raw["pdstack:hosts"] = dict(reversed(list(raw["pdstack:hosts"].items())))
    assert parse_cluster(raw) == EXPECTED


def test_extra_args_string_and_list_are_equal():
    as_list = config(put("pdstack:prefill", 0, "engine", "extraArgs", ["--enforce-eager", "--foo", "a b"]))
    assert parse_cluster(as_list) == EXPECTED


def test_host_key_overrides_stack_key_and_comment_is_dropped():
    raw = config(put("pdstack:ssh", {"privateKey": PEM, "hostKey": ED25519 + " root@p0"}),
                 put("pdstack:hosts", "p0", "privateKeyPath", "/k"))
    spec = parse_cluster(raw)
    assert spec.ssh == SshSettings(private_key=PEM, host_key=ED25519)
    assert spec.host("p0").ssh == SshSettings(private_key_path="/k", host_key=ED25519)
    assert spec.host("d0").ssh == SshSettings(private_key=PEM, host_key=ED25519)


def test_keys_only_per_host():
    raw = config(put("pdstack:ssh", {}), *[put("pdstack:hosts", h, "privateKeyPath", f"/k/{h}")
                                           for h in BASE["pdstack:hosts"] if h != "p2"])
    spec = parse_cluster(raw)
    assert spec.ssh == SshSettings()
    assert spec.host("d1").ssh.private_key_path == "/k/d1"


def test_host_in_both_roles_with_disjoint_devices():
    raw = config(put("pdstack:decode", 0, "hosts", ["d0", "p2"]), put("pdstack:decode", 0, "devices", "8-15"),
                 put("pdstack:decode", 0, "tensorParallel", 1))
    assert parse_cluster(raw).decode[0].hosts == ("d0", "p2")


def test_all_issues_are_reported():
    message = parse_error(config(put("pdstack:image", "UPPER CASE"), put("pdstack:ports", "masterBase", 1),
                                 put("pdstack:prefill", 0, "devices", "9-1")))
    lines = message.splitlines()
    assert len(lines) == 3
    assert [line.split(":")[0] + ":" + line.split(":")[1] for line in lines] == [
        "pdstack:image", "pdstack:prefill[0].devices", "pdstack:ports.masterBase"]


def test_private_key_is_never_shown():
    secret = "my-very-secret-key-material"
    message = parse_error(config(put("pdstack:hosts", "p2", "privateKey", secret)))
    assert "pdstack:hosts.p2.privateKey" in message and secret not in message


# --- each validation rule -------------------------------------------------------------------------

BROKEN = [
    # required keys
    ("no image", drop("pdstack:image"), "pdstack:image", ["is required", "quay.io/"]),
    ("no hosts", drop("pdstack:hosts"), "pdstack:hosts", ["is required", "address"]),
    ("no prefill", drop("pdstack:prefill"), "pdstack:prefill", ["is required"]),
    ("no decode", drop("pdstack:decode"), "pdstack:decode", ["is required"]),
    ("no proxy", drop("pdstack:proxy"), "pdstack:proxy", ["is required", "host"]),
    ("no proxy host", drop("pdstack:proxy", "host"), "pdstack:proxy.host", ["is required"]),
    ("no address", drop("pdstack:hosts", "d1", "address"), "pdstack:hosts.d1.address", ["is required"]),
    ("no name", drop("pdstack:prefill", 1, "name"), "pdstack:prefill[1].name", ["is required"]),
    ("no instance hosts", drop("pdstack:decode", 0, "hosts"), "pdstack:decode[0].hosts", ["is required"]),
    ("no devices", drop("pdstack:decode", 0, "devices"), "pdstack:decode[0].devices", ["is required"]),
    # unknown keys
    ("top-level typo", put("pdstack:imgae", "x"), "pdstack:imgae", ['did you mean "pdstack:image"']),
    ("engine typo", put("pdstack:prefill", 1, "engine", {"max_num_seqs": 3}),
     "pdstack:prefill[1].engine.max_num_seqs", ['did you mean "maxNumSeqs"', "maxModelLen"]),
    ("host typo", put("pdstack:hosts", "d1", "adress", "10.0.0.9"), "pdstack:hosts.d1.adress",
     ['did you mean "address"']),
    ("proxy unknown", put("pdstack:proxy", "colour", "red"), "pdstack:proxy.colour", ["valid keys: host, port"]),
    # wrong types
    ("string port", put("pdstack:ports", "masterBase", "8000"), "pdstack:ports.masterBase",
     ["whole number from 1024 to 65535", 'the string "8000"']),
    ("bool is not int", put("pdstack:readiness", "timeoutSeconds", True), "pdstack:readiness.timeoutSeconds",
     ["whole number", "boolean"]),
    ("float is not int", put("pdstack:decode", 0, "engine", "maxNumSeqs", 2.5), "pdstack:decode[0].engine.maxNumSeqs",
     ["whole number", "2.5"]),
    ("hosts as list", put("pdstack:hosts", ["p0"]), "pdstack:hosts", ["expected a map", "a list"]),
    ("prefill as map", put("pdstack:prefill", {"name": "x"}), "pdstack:prefill", ["expected a list", "a map"]),
    ("image null", put("pdstack:image", None), "pdstack:image", ["expected an image reference", "null"]),
    ("image as number", put("pdstack:image", 3), "pdstack:image", ["expected an image reference", "quay.io/"]),
    ("bad JSON", put("pdstack:hosts", "{p0: 1"), "pdstack:hosts", ["not JSON"]),
    # ranges
    ("low port", put("pdstack:ports", "apiBase", 80), "pdstack:ports.apiBase", ["1024 to 65535", "80"]),
    ("proxy port > 65500", put("pdstack:proxy", "port", 65501), "pdstack:proxy.port", ["1024 to 65500"]),
    ("gpu util > 1", put("pdstack:prefill", 0, "engine", "gpuMemoryUtilization", 1.5),
     "pdstack:prefill[0].engine.gpuMemoryUtilization", ["greater than 0 and at most 1"]),
    ("gpu util 0", put("pdstack:decode", 0, "engine", "gpuMemoryUtilization", 0),
     "pdstack:decode[0].engine.gpuMemoryUtilization", ["greater than 0"]),
    ("maxModelLen 0", put("pdstack:prefill", 0, "engine", "maxModelLen", 0),
     "pdstack:prefill[0].engine.maxModelLen", ["from 1"]),
    ("tensorParallel 0", put("pdstack:decode", 0, "tensorParallel", 0), "pdstack:decode[0].tensorParallel", ["from 1"]),
    ("interval 0", put("pdstack:readiness", "intervalSeconds", 0), "pdstack:readiness.intervalSeconds", ["from 1"]),
    ("interval > timeout", put("pdstack:readiness", "intervalSeconds", 601), "pdstack:readiness.intervalSeconds",
     ["longer than timeoutSeconds"]),
    ("ssh port 0", put("pdstack:hosts", "p1", "port", 0), "pdstack:hosts.p1.port", ["1 to 65535"]),
    # hosts
    ("host name case", put("pdstack:hosts", "P3", {"address": "10.0.0.9"}), "pdstack:hosts.P3", ["lowercase"]),
    ("host name dot", put("pdstack:hosts", "p.3", {"address": "10.0.0.9"}), 'pdstack:hosts["p.3"]', ["lowercase"]),
    ("bad IPv4", put("pdstack:hosts", "d1", "address", "10.0.0.256"), "pdstack:hosts.d1.address",
     ["not a valid IPv4", "node1.example.com"]),
    ("engine host by DNS name", put("pdstack:hosts", "p2", "address", "node3.example.com"), "pdstack:hosts.p2.address",
     ["DNS name", "ranktables", "IPv4 address like 10.0.0.1"]),
    ("bad DNS", put("pdstack:hosts", "d1", "address", "bad_host!"), "pdstack:hosts.d1.address",
     ["neither an IPv4 address nor a DNS name"]),
    ("same address", put("pdstack:hosts", "d1", "address", "10.0.0.5"), "pdstack:hosts.d1.address",
     ['also the address of host "d0"', "each machine once"]),
    ("host settings not a map", put("pdstack:hosts", "d1", "10.0.0.6"), "pdstack:hosts.d1",
     ["expected a map", "address"]),
    # ssh keys
    ("no key anywhere", lambda raw: (raw["pdstack:ssh"].pop("privateKeyPath"),
                                     raw["pdstack:hosts"]["p2"].pop("privateKey")), "pdstack:ssh",
     ["no SSH key", "privateKeyPath", "privateKey"]),
    ("host without key", lambda raw: (raw["pdstack:ssh"].pop("privateKeyPath"),
                                      raw["pdstack:hosts"]["p0"].update(privateKeyPath="/k")),
     "pdstack:hosts.d0", ["has no SSH key"]),
    ("both keys stack-wide", put("pdstack:ssh", "privateKey", PEM), "pdstack:ssh",
     ["both privateKeyPath and privateKey", "keep one"]),
    ("both keys on a host", put("pdstack:hosts", "p2", "privateKeyPath", "/k"), "pdstack:hosts.p2",
     ["both privateKeyPath and privateKey"]),
    ("key not PEM", put("pdstack:hosts", "p2", "privateKey", "~/.ssh/id"), "pdstack:hosts.p2.privateKey",
     ["does not look like a private key", "privateKeyPath"]),
    ("host key type", put("pdstack:hosts", "p2", "hostKey", "ssh-dss AAAAB3NzaC1kc3M="), "pdstack:hosts.p2.hostKey",
     ["not a known host key type", "ssh-ed25519"]),
    ("host key base64", put("pdstack:hosts", "p2", "hostKey", "ssh-ed25519 !!!"), "pdstack:hosts.p2.hostKey",
     ["not valid base64"]),
    ("host key other type", put("pdstack:hosts", "p2", "hostKey", "ssh-rsa " + ED25519.split()[1]),
     "pdstack:hosts.p2.hostKey", ["not a ssh-rsa key"]),
    ("host key one word", put("pdstack:ssh", "hostKey", "AAAA"), "pdstack:ssh.hostKey", ["<type> <base64>"]),
    ("ssh user", put("pdstack:ssh", "user", "ro ot"), "pdstack:ssh.user", ["not a valid user name"]),
    # instances
    ("instance name", put("pdstack:prefill", 0, "name", "Prefill_0"), "pdstack:prefill[0].name",
     ["lowercase letters, digits or '-'"]),
    ("name across roles", put("pdstack:decode", 0, "name", "prefill-1"), "pdstack:decode[0].name",
     ["also the name of pdstack:prefill[1]", "unique across prefill and decode"]),
    ("no hosts in instance", put("pdstack:prefill", 1, "hosts", []), "pdstack:prefill[1].hosts", ["lists no host"]),
    ("undefined host", put("pdstack:prefill", 1, "hosts", ["P2"]), "pdstack:prefill[1].hosts[0]",
     ['"P2" is not defined in pdstack:hosts', 'did you mean "p2"']),
    ("duplicate host", put("pdstack:prefill", 0, "hosts", ["p0", "p1", "p0"]), "pdstack:prefill[0].hosts[2]",
     ["listed twice"]),
    ("host not a string", put("pdstack:prefill", 0, "hosts", ["p0", 1]), "pdstack:prefill[0].hosts[1]",
     ["expected a host name"]),
    ("two prefill instances", put("pdstack:prefill", 1, "hosts", ["p1"]), "pdstack:prefill[1].hosts[0]",
     ["also in pdstack:prefill[0]", "a host used by two instances of the same role"]),
    ("two decode instances",
     lambda raw: raw["pdstack:decode"].append({"name": "decode-1", "hosts": ["d1"], "devices": "0-15"}),
     "pdstack:decode[1].hosts[0]", ["a host used by two instances of the same role"]),
    ("overlapping devices", put("pdstack:decode", 0, "hosts", ["d0", "p2"]), "pdstack:decode[0].devices",
     ["devices 0-3 on host \"p2\" are also used by pdstack:prefill[1]", '"0-7" for prefill']),
    ("no prefill instance", put("pdstack:prefill", []), "pdstack:prefill", ["lists no prefill instance"]),
    ("no decode instance", put("pdstack:decode", []), "pdstack:decode", ["lists no decode instance"]),
    # devices
    ("duplicate device", put("pdstack:prefill", 0, "devices", "0-15,3"), "pdstack:prefill[0].devices",
     ['"0-15,3" lists device 3 twice; write a range "0-15", a list "0,1,2" or [0, 1, 2]']),
    ("reversed range", put("pdstack:prefill", 0, "devices", "15-0"), "pdstack:prefill[0].devices",
     ["reversed range 15-0", "0-15"]),
    ("device > 63", put("pdstack:prefill", 0, "devices", "0-64"), "pdstack:prefill[0].devices", ["out of range 0..63"]),
    ("negative device", put("pdstack:prefill", 0, "devices", [-1, 0]), "pdstack:prefill[0].devices",
     ["out of range 0..63"]),
    ("empty list", put("pdstack:prefill", 0, "devices", []), "pdstack:prefill[0].devices", ["lists no device"]),
    ("spaces only", put("pdstack:prefill", 0, "devices", "   "), "pdstack:prefill[0].devices", ["lists no device"]),
    ("junk", put("pdstack:prefill", 0, "devices", "0-3,a-b"), "pdstack:prefill[0].devices",
     ['"a-b", which is neither an id nor a range']),
    ("trailing comma", put("pdstack:prefill", 0, "devices", "0,1,"), "pdstack:prefill[0].devices", ["an empty item"]),
    ("device list of strings", put("pdstack:prefill", 0, "devices", ["0"]), "pdstack:prefill[0].devices",
     ["not a device id"]),
    ("devices null", put("pdstack:prefill", 0, "devices", None), "pdstack:prefill[0].devices",
     ["expected a string or a list", "null"]),
    ("TP does not divide", put("pdstack:decode", 0, "tensorParallel", 3), "pdstack:decode[0].tensorParallel",
     ["3 does not divide the 8 devices", "use one of 1, 2, 4, 8"]),
    # proxy
    ("proxy host undefined", put("pdstack:proxy", "host", "c0"), "pdstack:proxy.host", ['"c0" is not defined']),
    ("proxy policy", put("pdstack:proxy", "prefillPolicy", "roundrobin"), "pdstack:proxy.prefillPolicy",
     ["is not one of pd_score_balance", 'did you mean "round_robin"']),
    # ports on one host
    ("proxy port clash", put("pdstack:proxy", "port", 9000), "pdstack:proxy.port",
     ["on host p0, port 9000", "proxy", "prefill prefill-0 API", "move one role"]),
    ("base clash", put("pdstack:ports", "masterBase", 9000), "pdstack:ports",
     ["on host p0, port 9000", "prefill prefill-0 API", "prefill prefill-0 DP master",
      "pdstack:ports.masterBase or apiBase"]),
    ("ray port clash", put("pdstack:proxy", "port", 6379), "pdstack:proxy.port", ["Ray head"]),
    ("port overflow", put("pdstack:ports", "apiBase", 65500), "pdstack:ports", ["above 65535", "apiBase"]),
    # engine
    ("extraArgs quote", put("pdstack:prefill", 0, "engine", "extraArgs", "--foo 'a"),
     "pdstack:prefill[0].engine.extraArgs",
     ["cannot be split", '["--foo", "1"]']),
    ("extraArgs number", put("pdstack:prefill", 0, "engine", "extraArgs", ["--foo", 1]),
     "pdstack:prefill[0].engine.extraArgs[1]", ["expected a string"]),
    ("env name", put("pdstack:prefill", 0, "engine", "env", {"1BAD": "x"}), "pdstack:prefill[0].engine.env.1BAD",
     ["not a variable name"]),
    ("env value", put("pdstack:prefill", 0, "engine", "env", {"A": [1]}), "pdstack:prefill[0].engine.env.A",
     ["string, number or boolean"]),
    # image, paths, containers, model
    ("image uppercase", put("pdstack:image", "quay.io/Ascend/vllm:v1"), "pdstack:image",
     ["must be lowercase", "quay.io/ascend/vllm-ascend:v0.9.0-dsv3.2"]),
    ("image tag", put("pdstack:image", "vllm:-bad"), "pdstack:image", ["tag"]),
    ("image digest", put("pdstack:image", "vllm@sha256:abc"), "pdstack:image", ["digest"]),
    ("image space", put("pdstack:image", "vllm ascend"), "pdstack:image", ["whitespace"]),
    ("relative path", put("pdstack:paths", "logs", "log_path"), "pdstack:paths.logs", ["absolute path"]),
    ("model path", put("pdstack:model", "path", "/data/my models"), "pdstack:model.path", ["absolute path"]),
    ("same prefix", put("pdstack:containers", "decode", "pf"), "pdstack:containers.decode",
     ["also the prefill prefix"]),
    ("container prefix", put("pdstack:containers", "proxy", "-x"), "pdstack:containers.proxy",
     ["not a valid container name prefix"]),
]


@pytest.mark.parametrize("mutate, path, words", [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_broken_config(mutate, path, words):
    message = parse_error(config(mutate))
    lines = [line for line in message.splitlines() if line.startswith(path + ": ")]
    assert lines, f"no issue at {path}:\n{message}"
    for word in words:
        assert any(word in line for line in lines), f"{word!r} not in:\n{message}"


def test_one_mistake_gives_one_issue():
    # An undefined host reported once, not again as a port or SSH problem.
    assert len(parse_error(config(put("pdstack:prefill", 1, "hosts", ["p3"]))).splitlines()) == 1
    assert len(parse_error(config(drop("pdstack:hosts"))).splitlines()) == 1


# --- local files ----------------------------------------------------------------------------------


def _spec_with_keys(stack: str, own: str | None = None) -> ClusterSpec:
    raw = config(base=MINIMAL)
    raw["pdstack:ssh"] = {"privateKeyPath": stack}
    if own:
        raw["pdstack:hosts"]["d0"]["privateKeyPath"] = own
    return parse_cluster(raw)


def test_local_key_files(tmp_path, monkeypatch):
    key = tmp_path / "id"
    key.write_text(PEM)
    monkeypatch.setenv("HOME", str(tmp_path))
    check_local_files(_spec_with_keys("~/id"))
    with pytest.raises(ConfigError, match=r"pdstack:ssh.privateKeyPath: \"~/nope\" \(\".*/nope\"\) does not exist"):
        check_local_files(_spec_with_keys("~/nope"))
    with pytest.raises(ConfigError, match=r"^pdstack:hosts.d0.privateKeyPath: .* is not a file"):
        check_local_files(_spec_with_keys(str(key), own=str(tmp_path)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_key_file(tmp_path):
    key = tmp_path / "id"
    key.write_text(PEM)
    key.chmod(0)
    with pytest.raises(ConfigError, match="cannot be read"):
        check_local_files(_spec_with_keys(str(key)))


# --- any input: a ClusterSpec or a ConfigError ----------------------------------------------------

TOP_KEYS = [k for k in BASE if k.startswith("pdstack:")]
WORDS = sorted({"name", "hosts", "devices", "engine", "address", "host", "port", "privateKey", "privateKeyPath",
                "hostKey", "user", "tensorParallel", "extraArgs", "env", "maxNumSeqs", "p0", "d0", "0-15"})
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from(WORDS))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6), inner, max_size=4),
                      max_leaves=12)


def _accepts_or_rejects(raw: Any) -> None:
    try:
        spec = parse_cluster(raw)
    except ConfigError as err:
        assert err.issues and all(issue.path.startswith("pdstack") for issue in err.issues)
        assert len(str(err).splitlines()) == len(err.issues)
    else:
        assert isinstance(spec, ClusterSpec)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(TOP_KEYS + ["pdstack:x", "aws:region"]),
                       values | values.map(json.dumps), max_size=len(TOP_KEYS)))
def test_any_top_level_values(raw):
    _accepts_or_rejects(raw)


def _paths_of(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths_of(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths_of(value, prefix + (index,))
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_paths_of(BASE)), values)
def test_any_value_anywhere_in_a_valid_config(path, value):
    _accepts_or_rejects(config(put(*path, value)))


def test_a_proxy_only_host_may_be_a_dns_name():
    raw = copy.deepcopy(BASE)
    raw["pdstack:hosts"]["gw"] = {"address": "gateway.example.com"}
    raw["pdstack:proxy"]["host"] = "gw"
    assert parse_cluster(raw).host("gw").address == "gateway.example.com"
