"""HCCL ranktables (omni_ansible_spec.md §5.3), rendered from device addresses read on each host.

Layout under the ranktable path, as the reference leaves it on every host:
- `prefill_config/local_ranktable_<ip>_<devices>.json`, `decode_config/…`: one host's devices;
- `global/collect_files_p/<master ip>/local_ranktable_merge.json`: a multi-host prefill instance;
- `global/collect_files_d/<master ip>/local_ranktable_merge.json`: a multi-host decode instance (the
  reference has one decode instance and drops the `<master ip>` level; with several it is needed);
- `global/global_ranktable_merge.json`: every instance, one group each (prefill first).
Each container gets only the files its own processes read; the global file, shared by a host's
containers, is written once per host.
"""
from __future__ import annotations

import json
import re
from typing import Mapping

from ..config.model import ClusterSpec, DecodeInstance, PrefillInstance
from .model import FileSpec

DeviceAddresses = Mapping[str, Mapping[int, str]]  # host name -> device id -> RoCE address

_IPADDR = re.compile(r"^ipaddr:\s*(\d{1,3}(?:\.\d{1,3}){3})\s*$")


class DeviceAddressError(ValueError):
    pass


def read_devices_command(devices: tuple[int, ...]) -> str:
    """Shell command printing `<device> <first line of hccn_tool -i <device> -ip -g>` per device."""
    ids = " ".join(str(d) for d in devices)
    return (f"for d in {ids}; do printf '%s ' \"$d\"; "
            "hccn_tool -i \"$d\" -ip -g 2>&1 | head -n 1; done")


def parse_device_addresses(host: str, devices: tuple[int, ...], stdout: str) -> dict[int, str]:
    found: dict[int, str] = {}
    problems = []
    for line in stdout.splitlines():
        dev, _, rest = line.strip().partition(" ")
        if not dev.isdigit():
            continue
        match = _IPADDR.match(rest.strip())
        if match:
            found[int(dev)] = match.group(1)
        else:
            problems.append(f"device {dev}: hccn_tool said {rest.strip()!r}")
    missing = [d for d in devices if d not in found]
    if missing or problems:
        detail = "; ".join(problems) or f"no address for devices {missing}"
        raise DeviceAddressError(
            f"host {host}: could not read device addresses with `hccn_tool -i N -ip -g` ({detail}). "
            "Check /etc/hccn.conf on that host and that the devices listed for it exist.")
    return found


def _devices_word(devices: tuple[int, ...]) -> str:
    return "".join(str(d) for d in devices)


def local_path(spec: ClusterSpec, role: str, address: str, devices: tuple[int, ...]) -> str:
    sub = "prefill_config" if role == "prefill" else "decode_config"
    return f"{spec.paths.ranktables}/{sub}/local_ranktable_{address}_{_devices_word(devices)}.json"


def merged_path(spec: ClusterSpec, role: str, master_address: str) -> str:
    sub = "collect_files_p" if role == "prefill" else "collect_files_d"
    return f"{spec.paths.ranktables}/global/{sub}/{master_address}/local_ranktable_merge.json"


def global_path(spec: ClusterSpec) -> str:
    return f"{spec.paths.ranktables}/global/global_ranktable_merge.json"


def instance_rank_table_path(spec: ClusterSpec, role: str, inst: PrefillInstance | DecodeInstance) -> str:
    """RANK_TABLE_FILE_PATH of the instance's processes (merged when it spans hosts)."""
    master = spec.host(inst.hosts[0]).address
    if len(inst.hosts) > 1:
        return merged_path(spec, role, master)
    return local_path(spec, role, master, inst.devices)


def ordered_hosts(spec: ClusterSpec, role: str, inst: PrefillInstance | DecodeInstance) -> tuple[str, ...]:
    """Hosts in rank order. The prefill runtime re-sorts a group's non-first servers by address string
    (reference §5.3 step 4, gotcha §9.4), so pdstack numbers ranks in that order from the start."""
    if role != "prefill":
        return inst.hosts
    rest = sorted(inst.hosts[1:], key=lambda h: spec.host(h).address)
    return (inst.hosts[0], *rest)


def _server(address: str, devices: tuple[int, ...], addrs: Mapping[int, str], first_rank: int) -> dict:
    return {
        "server_id": address,
        "server_ip": address,
        "device": [{"device_id": str(d), "device_ip": addrs[d], "rank_id": str(first_rank + i)}
                   for i, d in enumerate(devices)],
    }


def _servers(spec: ClusterSpec, role: str, inst, device_addresses: DeviceAddresses) -> list[dict]:
    servers = []
    for n, name in enumerate(ordered_hosts(spec, role, inst)):
        servers.append(_server(spec.host(name).address, inst.devices, device_addresses[name], n * len(inst.devices)))
    return servers


def _file(path: str, doc: dict) -> FileSpec:
    # Indented for people who read them on the host; compressed on the way there (see FileSpec).
    return FileSpec(path, json.dumps(doc, indent=2) + "\n", compressed=True)


def render_global_ranktable(spec: ClusterSpec, device_addresses: DeviceAddresses) -> FileSpec:
    """Every instance, one group each (prefill first). One file per host, whatever roles it serves."""
    groups = []
    for role, instances in (("prefill", spec.prefill), ("decode", spec.decode)):
        for inst in instances:
            groups.append({"group_id": str(len(groups)), "server_count": len(inst.hosts),
                           "server_list": _servers(spec, role, inst, device_addresses)})
    return _file(global_path(spec), {"version": "1.0", "status": "completed", "server_group_list": groups})


def render_ranktables(spec: ClusterSpec, device_addresses: DeviceAddresses) -> dict[str, tuple[FileSpec, ...]]:
    """Per prefill/decode host name, the instance ranktables it needs (local, and merged for a multi-host
    instance) for each role it serves; the global ranktable is `render_global_ranktable`."""
    files: dict[str, list[FileSpec]] = {}
    for role, instances in (("prefill", spec.prefill), ("decode", spec.decode)):
        for inst in instances:
            merged = None
            if len(inst.hosts) > 1:
                master = spec.host(inst.hosts[0]).address
                merged = _file(merged_path(spec, role, master), {
                    "version": "1.0", "status": "completed", "group_id": "0",
                    "server_count": len(inst.hosts),
                    "server_list": _servers(spec, role, inst, device_addresses)})
            for name in inst.hosts:
                address = spec.host(name).address
                local = _file(local_path(spec, role, address, inst.devices), {
                    "version": "1.0", "status": "completed", "group_id": "0", "server_count": "1",
                    "server_list": [_server(address, inst.devices, device_addresses[name], 0)]})
                files.setdefault(name, []).extend([local] + ([merged] if merged else []))
    return {name: tuple(fs) for name, fs in files.items()}
