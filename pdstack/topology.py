"""Derived values of a cluster spec: ranks, offsets and ports (omni_ansible_spec.md §4 and §6).

Pure functions of a ClusterSpec; both validation (port clashes) and rendering use them, so each rule
is written once.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from . import profile
from .config.model import ClusterSpec, DecodeInstance, PrefillInstance

DECODE_PORT_OFFSET = 100  # the reference's port_offset.D


def kv_parallel_size(spec: ClusterSpec) -> int:
    # Every instance is one group of the global ranktable. The reference supports one decode
    # instance (kv_parallel_size = PREFILL_POD_NUM + 1); several decode instances extend it.
    return len(spec.prefill) + len(spec.decode)


def prefill_index(spec: ClusterSpec, inst: PrefillInstance) -> int:
    return spec.prefill.index(inst)


def decode_index(spec: ClusterSpec, inst: DecodeInstance) -> int:
    return spec.decode.index(inst)


def prefill_kv_rank(spec: ClusterSpec, inst: PrefillInstance) -> int:
    return prefill_index(spec, inst)


def decode_kv_rank(spec: ClusterSpec, inst: DecodeInstance) -> int:
    return len(spec.prefill) + decode_index(spec, inst)


def prefill_master_port(spec: ClusterSpec, inst: PrefillInstance) -> int:
    return spec.ports.master_base + prefill_index(spec, inst)


def prefill_api_port(spec: ClusterSpec, inst: PrefillInstance) -> int:
    return spec.ports.api_base + prefill_index(spec, inst)


def decode_master_port(spec: ClusterSpec, inst: DecodeInstance) -> int:
    return spec.ports.master_base + DECODE_PORT_OFFSET + decode_index(spec, inst)


def decode_api_ports(spec: ClusterSpec, inst: DecodeInstance, node_rank: int) -> tuple[int, ...]:
    """One port per API server on the host at `node_rank` (reference: api_port + r, api_port = base + 100 + rank)."""
    first = spec.ports.api_base + DECODE_PORT_OFFSET + node_rank
    return tuple(first + r for r in range(inst.servers_per_host))


def decode_dp_offset(inst: DecodeInstance, node_rank: int) -> int:
    return node_rank * inst.servers_per_host


def prefill_kv_ports(inst: PrefillInstance) -> tuple[int, ...]:
    # One API server per prefill instance, so one DP rank (0) and one KV port on its master.
    return (profile.LLMDATADIST_ZMQ_PORT,)


@dataclass(frozen=True)
class PortUse:
    port: int
    what: str  # e.g. "prefill-0 API", for error messages


def host_ports(spec: ClusterSpec) -> dict[str, list[PortUse]]:
    """Every port each host binds, with what binds it."""
    uses: dict[str, list[PortUse]] = defaultdict(list)
    for inst in spec.prefill:
        master = inst.hosts[0]
        uses[master].append(PortUse(prefill_api_port(spec, inst), f"prefill {inst.name} API"))
        uses[master].append(PortUse(prefill_master_port(spec, inst), f"prefill {inst.name} DP master"))
        for port in prefill_kv_ports(inst):
            uses[master].append(PortUse(port, f"prefill {inst.name} KV transfer"))
        if len(inst.hosts) > 1:
            uses[master].append(PortUse(profile.RAY_HEAD_PORT, f"prefill {inst.name} Ray head"))
    for inst in spec.decode:
        uses[inst.hosts[0]].append(PortUse(decode_master_port(spec, inst), f"decode {inst.name} DP master"))
        for rank, host in enumerate(inst.hosts):
            for port in decode_api_ports(spec, inst, rank):
                uses[host].append(PortUse(port, f"decode {inst.name} API"))
    uses[spec.proxy.host].append(PortUse(spec.proxy.port, "proxy"))
    return dict(uses)


def port_clashes(spec: ClusterSpec) -> list[tuple[str, int, str, str]]:
    """(host, port, first user, second user) for every port two things on one host would bind."""
    clashes = []
    for host, uses in sorted(host_ports(spec).items()):
        seen: dict[int, str] = {}
        for use in uses:
            if use.port in seen:
                clashes.append((host, use.port, seen[use.port], use.what))
            else:
                seen[use.port] = use.what
    return clashes
