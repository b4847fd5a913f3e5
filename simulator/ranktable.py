"""HCCL ranktable checks.

A real Ascend engine builds its HCCL communicators from these files and fails when this host
or its devices are not in them; the simulator refuses to start in the same cases, with a
message that says which file, which addresses and which devices disagree.
"""

import glob
import json
import os

from . import netaddr


class RanktableError(Exception):
    pass


def resolve_path(path: str) -> str:
    """The file itself, or the single match of a shell pattern (pd_run.sh passes
    `local_*merge.json`-style paths that are sometimes left unexpanded)."""
    if os.path.isfile(path):
        return path
    if any(c in path for c in "*?["):
        hits = sorted(glob.glob(path))
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise RanktableError(f"ranktable pattern {path} matches {len(hits)} files: {hits}")
    raise RanktableError(f"ranktable file {path} does not exist")


def load(path: str) -> tuple[str, dict]:
    real = resolve_path(path)
    try:
        with open(real) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise RanktableError(f"cannot read ranktable {real}: {e}") from None
    if not isinstance(data, dict):
        raise RanktableError(f"ranktable {real}: top level is not an object")
    if data.get("status") != "completed":
        raise RanktableError(f"ranktable {real}: status is {data.get('status')!r}, not 'completed'")
    return real, data


def _servers(data: dict, where: str) -> list[dict]:
    servers = data.get("server_list")
    if not isinstance(servers, list) or not servers:
        raise RanktableError(f"ranktable {where}: server_list is missing or empty")
    for s in servers:
        if not isinstance(s, dict) or "server_ip" not in s:
            raise RanktableError(f"ranktable {where}: a server_list entry has no server_ip")
    return servers


def server_ips(data: dict, where: str = "") -> list[str]:
    return [str(s["server_ip"]) for s in _servers(data, where)]


def check_local(path: str, visible_devices: str | None, nets=None) -> dict:
    """The server entry of this host in a local ranktable; raises when there is none or when
    it lacks one of the visible devices."""
    real, data = load(path)
    servers = _servers(data, real)
    nets = nets if nets is not None else netaddr.local_networks()
    mine = [s for s in servers if netaddr.is_local(str(s["server_ip"]), nets)]
    if not mine:
        raise RanktableError(
            f"local ranktable {real} lists server_ip {[s['server_ip'] for s in servers]}, "
            f"none of which is an address of this host {netaddr.interface_addresses(nets)}")
    entry = mine[0]
    if visible_devices:
        wanted = [d.strip() for d in visible_devices.split(",") if d.strip()]
        have = {str(d.get("device_id")) for d in entry.get("device", []) if isinstance(d, dict)}
        missing = [d for d in wanted if d not in have]
        if missing:
            raise RanktableError(
                f"local ranktable {real}: server {entry['server_ip']} has device_id "
                f"{sorted(have, key=_num)} but ASCEND_RT_VISIBLE_DEVICES={visible_devices} "
                f"also needs {missing}")
    return entry


def check_global(path: str, nets=None) -> dict:
    """The server group holding this host in a global ranktable."""
    real, data = load(path)
    groups = data.get("server_group_list")
    if not isinstance(groups, list) or not groups:
        raise RanktableError(f"global ranktable {real}: server_group_list is missing or empty")
    nets = nets if nets is not None else netaddr.local_networks()
    listed = []
    for g in groups:
        ips = server_ips(g, f"{real} group {g.get('group_id')}")
        listed.extend(ips)
        if any(netaddr.is_local(ip, nets) for ip in ips):
            return g
    raise RanktableError(
        f"global ranktable {real} lists server_ip {listed}, none of which is an address "
        f"of this host {netaddr.interface_addresses(nets)}")


def _num(s: str):
    return (0, int(s)) if s.isdigit() else (1, s)
