"""Stack configs of the reference topologies (omni_ansible_spec.md §2.4 and §10), for the unit tests.

Each builder returns the raw `pdstack:*` config as a dict of plain values, the way `parse_cluster` gets
it; `as_pulumi_config` turns it into what the engine hands a program (JSON strings).
"""
from __future__ import annotations

import copy
import json
from typing import Any

from pdstack.config.model import ClusterSpec
from pdstack.config.parse import parse_cluster

IMAGE = "quay.io/ascend/vllm-ascend:v0.9.0-dsv3.2"
PATHS = {"logs": "/data/log_path", "scripts": "/tmp/scripts_path", "ranktables": "/tmp/ranktable_save_path"}
PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nc3RhY2std2lkZS1rZXk=\n-----END OPENSSH PRIVATE KEY-----\n"

# 1P32_1D32: p0..p3 one prefill instance, d0..d3 one decode instance, c0 the proxy's own host.
REFERENCE_ADDRESSES = {
    "p0": "10.0.0.1", "p1": "10.0.0.2", "p2": "10.0.0.3", "p3": "10.0.0.4",
    "d0": "10.0.1.1", "d1": "10.0.1.2", "d2": "10.0.1.3", "d3": "10.0.1.4",
    "c0": "10.0.2.1",
}
# 2P1D: p0 and p1 single-host prefill instances, d0 and d1 one decode instance, the proxy on p0.
TWO_P_ONE_D_ADDRESSES = {"p0": "10.0.0.1", "p1": "10.0.0.2", "d0": "10.0.1.1", "d1": "10.0.1.2"}


def _hosts(addresses: dict[str, str]) -> dict[str, dict[str, str]]:
    return {name: {"address": address} for name, address in addresses.items()}


def reference_1p32_1d32(*, proxy_host: str = "c0", addresses: dict[str, str] | None = None,
                        ssh: dict[str, Any] | None = None) -> dict[str, Any]:
    addresses = {**REFERENCE_ADDRESSES, **(addresses or {})}
    if proxy_host != "c0":
        del addresses["c0"]  # the reference's c0 shares p0's address: here, the proxy goes on p0 itself
    return {
        "pdstack:image": IMAGE,
        "pdstack:ssh": ssh or {"user": "root", "privateKeyPath": "~/.ssh/not-read-by-parse"},
        "pdstack:paths": dict(PATHS),
        "pdstack:hosts": _hosts(addresses),
        "pdstack:prefill": [{"name": "prefill-0", "hosts": ["p0", "p1", "p2", "p3"], "devices": "0-15"}],
        "pdstack:decode": [{"name": "decode-0", "hosts": ["d0", "d1", "d2", "d3"], "devices": "0-15",
                            "tensorParallel": 1}],
        "pdstack:proxy": {"host": proxy_host, "port": 7000},
    }


def reference_2p1d(*, ssh: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "pdstack:image": IMAGE,
        "pdstack:ssh": ssh or {"user": "root", "privateKeyPath": "~/.ssh/not-read-by-parse"},
        "pdstack:paths": dict(PATHS),
        "pdstack:hosts": _hosts(TWO_P_ONE_D_ADDRESSES),
        "pdstack:prefill": [{"name": "prefill-0", "hosts": ["p0"], "devices": "0-15"},
                            {"name": "prefill-1", "hosts": ["p1"], "devices": "0-15"}],
        "pdstack:decode": [{"name": "decode-0", "hosts": ["d0", "d1"], "devices": "0-15"}],
        "pdstack:proxy": {"host": "p0"},
    }


def spec_of(raw: dict[str, Any]) -> ClusterSpec:
    return parse_cluster(copy.deepcopy(raw))


def as_pulumi_config(raw: dict[str, Any]) -> dict[str, str]:
    """What the engine passes a program: every value a string, maps and lists as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in raw.items()}


def shared_host(*, ssh: dict[str, Any] | None = None) -> dict[str, Any]:
    """n0 runs prefill on devices 0-7 and decode on 8-15; n1 is the other decode host and the proxy's."""
    return {
        "pdstack:image": IMAGE,
        "pdstack:ssh": ssh or {"user": "root", "privateKeyPath": "~/.ssh/not-read-by-parse"},
        "pdstack:paths": dict(PATHS),
        "pdstack:hosts": _hosts({"n0": "10.0.3.1", "n1": "10.0.3.2"}),
        "pdstack:prefill": [{"name": "prefill-0", "hosts": ["n0"], "devices": "0-7"}],
        "pdstack:decode": [{"name": "decode-0", "hosts": ["n0", "n1"], "devices": "8-15"}],
        "pdstack:proxy": {"host": "n1"},
    }
