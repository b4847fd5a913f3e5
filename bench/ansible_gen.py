"""Inventory and per-host variables for the Ansible playbooks, rendered by pdstack from the same stack
config, so Ansible runs the same containers with the same files; and the ranktable step the playbooks
run on the controller once the device addresses are read.

Every string goes to Ansible as `!unsafe`: launch scripts and docker format strings contain `{{`, which
Ansible would otherwise try to template.
"""
from __future__ import annotations

import json
import posixpath
import sys
from pathlib import Path

from pdstack import image_resolve
from pdstack.rendering import ranktable
from pdstack.rendering.plan import render

from . import pdcmds
from .common import KEY, KNOWN_HOSTS, cluster_spec


def _yaml(value, indent=0) -> str:
    pad = "  " * indent
    if isinstance(value, dict):
        return "".join(f"{pad}{k}:" + (("\n" + _yaml(v, indent + 1)) if isinstance(v, (dict, list)) and v
                                        else " " + _yaml(v).strip() + "\n") for k, v in value.items())
    if isinstance(value, list):
        if not value:
            return "[]\n"
        return "".join(f"{pad}-" + ("\n" + _yaml(v, indent + 1) if isinstance(v, (dict, list)) else " " + _yaml(v).strip() + "\n")
                       for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "!unsafe " + json.dumps(value)


def write_inventory(config: dict, out: Path, forks: int, pipelining: bool, ssh_log: bool = False) -> None:
    spec = cluster_spec(config)
    deployment = render(spec)
    image, _ = image_resolve.resolve(spec.image)
    out.mkdir(parents=True, exist_ok=True)
    (out / "host_vars").mkdir(exist_ok=True)
    (out / "rt").mkdir(exist_ok=True)
    groups: dict[str, list[str]] = {"prefill": [], "decode": [], "proxy": []}
    reads = deployment.device_reads()
    global_path = ranktable.global_path(spec)
    for plan in deployment.plans():
        groups[plan.role].append(plan.host.name)
        rt_paths = list(plan.ranktable_paths) + ([global_path] if plan.devices else [])
        hv = {
            "ansible_host": plan.host.address,
            "container": plan.container.name,
            "pull_cmd": pdcmds.pull_image(image, plan.host.name),
            "run_cmd": pdcmds.run_container(plan, image),
            # The reference's removal: `docker stop` (Docker's default 10 s grace) then `docker rm -f`.
            "stop_cmd": f"docker stop {plan.container.name} >/dev/null 2>&1; docker rm -f {plan.container.name} >/dev/null 2>&1; true",
            "ready_script": pdcmds.readiness(plan, spec.readiness.timeout_seconds, spec.readiness.interval_seconds),
            "launch_files": [{"dest": f.path, "content": f.content, "mode": f"0{f.mode:o}"} for f in plan.files],
            "rt_files": [{"src": posixpath.basename(p), "dest": p} for p in rt_paths],
            "rt_dirs": sorted({posixpath.dirname(p) for p in rt_paths}),
            "log_dir": plan.log_dir,
            "scripts_dir": spec.paths.scripts,
            "ranktables_dir": spec.paths.ranktables,
        }
        if plan.role == "proxy":
            (out / "rt" / plan.host.name).mkdir(parents=True, exist_ok=True)
            (out / "rt" / plan.host.name / "write.sh").write_text(
                pdcmds.write_files(spec, plan.files, f"{plan.key}-files", plan))
        if plan.host.name in reads:
            hv["read_devices"] = ranktable.read_devices_command(reads[plan.host.name][1])
        (out / "host_vars" / f"{plan.host.name}.yml").write_text(_yaml(hv))
    inv = {"all": {"vars": {"ansible_user": "root", "ansible_ssh_private_key_file": KEY,
                            "ansible_python_interpreter": "/usr/bin/python3"},
                   "children": {g: {"hosts": {h: None for h in hs}} for g, hs in groups.items()}}}
    lines = []
    lines.append("all:\n  vars:\n")
    for k, v in inv["all"]["vars"].items():
        lines.append(f"    {k}: {v}\n")
    lines.append("  children:\n")
    for g, hs in groups.items():
        lines.append(f"    {g}:\n      hosts:\n")
        lines += [f"        {h}:\n" for h in hs]
    (out / "inventory.yml").write_text("".join(lines))
    ssh_args = (f"-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={KNOWN_HOSTS} "
                "-o StrictHostKeyChecking=yes")
    (out / "ansible.cfg").write_text(
        "[defaults]\n"
        f"inventory = {out}/inventory.yml\n"
        f"forks = {forks}\n"
        "host_key_checking = True\n"
        "retry_files_enabled = False\n"
        "stdout_callback = default\n"
        f"local_tmp = {out}/tmp\n"
        "[ssh_connection]\n"
        f"ssh_args = {ssh_args}\n"
        f"control_path_dir = {out}/cp\n"
        f"pipelining = {'True' if pipelining else 'False'}\n")
    (out / "stack.json").write_text(json.dumps(config))


def ranktables(out: Path) -> None:
    """Controller step: device-address outputs (JSON on stdin, host -> hccn_tool output) -> each host's
    ranktable files under out/rt/<host>/ (as named in its rt_files), and write.sh writing them and its
    launch script with pdstack's own commands."""
    spec = cluster_spec(json.loads((out / "stack.json").read_text()))
    deployment = render(spec)
    reads = deployment.device_reads()
    raw = json.load(sys.stdin)
    addresses = {h: ranktable.parse_device_addresses(h, reads[h][1], raw[h]) for h in reads}
    files = ranktable.render_ranktables(spec, addresses)
    global_file = ranktable.render_global_ranktable(spec, addresses)
    for host, fs in files.items():
        d = out / "rt" / host
        d.mkdir(parents=True, exist_ok=True)
        for f in fs + (global_file,):
            (d / posixpath.basename(f.path)).write_text(f.content)
    for plan in deployment.plans():
        if plan.devices:
            own = tuple(f for f in files[plan.host.name] if f.path in plan.ranktable_paths)
            (out / "rt" / plan.host.name / "write.sh").write_text(
                pdcmds.write_files(spec, (global_file,), f"{plan.host.name}-global-ranktable")
                + pdcmds.write_files(spec, plan.files + own, f"{plan.key}-files", plan))


if __name__ == "__main__":
    ranktables(Path(sys.argv[1]))
