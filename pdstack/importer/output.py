"""What the import writes (`Pulumi.<stack>.yaml`, in the style of examples/) and what it prints."""
from __future__ import annotations

import os
import textwrap
from typing import Any

import yaml

from .. import topology
from ..config.devices import format_devices
from ..rendering.plan import container_name, render
from . import Imported


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False):  # lists indented under their key
        return super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str):
    # Device lists like 0-15 read as strings anyway; quoting them keeps them from looking like numbers.
    style = '"' if value[:1].isdigit() and not value.replace(".", "").isdigit() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def stack_file_text(imported: Imported, stack: str) -> str:
    sources = " and ".join(os.path.basename(p) for p in (imported.inventory, imported.template) if p)
    lines = [f"# Imported from {sources} by `python -m pdstack import-ansible`.",
             f"# Check the warnings, then: bin/pulumi stack init {stack} && bin/pulumi preview"]
    findings = _ordered(imported)
    if findings:
        lines.append("# What the import reported:")
        for f in findings:
            where = os.path.basename(f.source.file) + (f":{f.source.line}" if f.source.line else "")
            lines += textwrap.wrap(f"{f.level}: {where}: {f.message}", width=116, initial_indent="#   ",
                                   subsequent_indent="#       ", break_on_hyphens=False)
    body = yaml.dump({"config": imported.mapped.config}, Dumper=_Dumper, sort_keys=False, default_flow_style=None,
                     width=120, allow_unicode=True)
    return "\n".join(lines) + "\n" + body


def write_stack_file(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def summary(imported: Imported, written: str) -> str:
    spec = imported.spec
    deployment = render(spec)
    origins = imported.mapped.host_origins
    inputs = " + ".join(p for p in (imported.inventory, imported.template) if p)
    out = [f"Imported {inputs} -> {written}", ""]

    out.append(f"hosts ({len(spec.hosts)}):")
    width = max(len(h.name) for h in spec.hosts)
    for host in _in_inventory_order(spec, origins):
        ssh = host.ssh
        login = f"{ssh.user}, port {ssh.port}" if ssh.port != 22 else ssh.user
        key = ssh.private_key_path or "(key as a secret)"
        merged = origins.get(host.name, [host.name])
        via = f"  inventory hosts {', '.join(merged)}" if merged != [host.name] else ""
        out.append(f"  {host.name:<{width}}  {host.address:<15}  {login}, key {key}{via}")

    out.append(f"prefill instances ({len(spec.prefill)}; kv_parallel_size {topology.kv_parallel_size(spec)}):")
    for inst, plans in deployment.prefill:
        master = spec.host(inst.hosts[0])
        out.append(f"  {inst.name}: kv rank {topology.prefill_kv_rank(spec, inst)}, master {inst.hosts[0]}, hosts "
                   f"{', '.join(inst.hosts)}, devices {format_devices(inst.devices)}, TP {inst.tensor_parallel}")
        out.append(f"    API {master.address}:{topology.prefill_api_port(spec, inst)}, DP RPC "
                   f"{topology.prefill_master_port(spec, inst)}, max-model-len {inst.engine.max_model_len}, "
                   f"max-num-seqs {inst.engine.max_num_seqs}   <- "
                   f"{imported.mapped.instance_origins.get(inst.name, '')}")
    out.append(f"decode instances ({len(spec.decode)}):")
    for inst, plans in deployment.decode:
        master = spec.host(inst.hosts[0])
        out.append(f"  {inst.name}: kv rank {topology.decode_kv_rank(spec, inst)}, master {inst.hosts[0]}, hosts "
                   f"{', '.join(inst.hosts)}, devices {format_devices(inst.devices)}, TP {inst.tensor_parallel}, DP "
                   f"{inst.data_parallel}   <- {imported.mapped.instance_origins.get(inst.name, '')}")
        out.append(f"    DP master {master.address}:{topology.decode_master_port(spec, inst)}, max-model-len "
                   f"{inst.engine.max_model_len}, max-num-seqs {inst.engine.max_num_seqs}")
        for rank, name in enumerate(inst.hosts):
            ports = topology.decode_api_ports(spec, inst, rank)
            offset = topology.decode_dp_offset(inst, rank)
            out.append(f"    {name}: API {spec.host(name).address}:{_span(ports)}, DP ranks "
                       f"{offset}-{offset + len(ports) - 1}")
    proxy = spec.proxy
    out.append(f"proxy: {proxy.host} {spec.host(proxy.host).address}:{proxy.port} "
               f"({proxy.prefill_policy}/{proxy.decode_policy}), {len(deployment.prefill_servers)} prefill and "
               f"{len(deployment.decode_servers)} decode servers")
    out.append(f"ports: masterBase {spec.ports.master_base}, apiBase {spec.ports.api_base} (decode "
               f"+{topology.DECODE_PORT_OFFSET})")
    out.append(f"image: {spec.image}")
    out.append(f"paths: logs {spec.paths.logs}, scripts {spec.paths.scripts}, ranktables {spec.paths.ranktables}; "
               f"model {spec.model.path} (served as {spec.model.served_name})")
    out.append(f"containers: {container_name(spec.containers.prefill, '<host>')}, "
               f"{container_name(spec.containers.decode, '<host>')}, "
               f"{container_name(spec.containers.proxy, '<host>')}")
    out.append(f"readiness: {spec.readiness.timeout_seconds} s per host")

    findings = _ordered(imported)
    for level in ("warning", "note"):
        found = [f for f in findings if f.level == level]
        if found:
            out += ["", f"{len(found)} {level}{'s' if len(found) != 1 else ''}:"]
            out += [f"  {f}" for f in found]
    if not any(f.level == "warning" for f in findings):
        out += ["", "no warnings"]
    return "\n".join(out) + "\n"


def _ordered(imported: Imported):
    return imported.report.ordered([p for p in (imported.inventory, imported.template) if p])


def _span(ports: tuple[int, ...]) -> str:
    return str(ports[0]) if len(ports) == 1 else f"{ports[0]}-{ports[-1]}"


def _in_inventory_order(spec, origins: dict[str, Any]):
    order = list(origins)
    return sorted(spec.hosts, key=lambda h: order.index(h.name) if h.name in order else len(order))
