"""Inventory + server template -> the `pdstack:*` stack config (the README's mapping table, as code).

Pure: reads the parsed inputs, returns the config as plain values, where each key came from, and a
Report of every warning and note. The rules, and what the reference would get wrong, are those of
omni_ansible_spec.md §2, §3.2, §4 and §9.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .. import profile
from ..config import checks
from ..config.devices import format_devices, parse_devices
from ..config.errors import InvalidValue
from ..config.image_ref import check_image_ref
from ..topology import DECODE_PORT_OFFSET
from . import expr
from .inventory import Inventory, Scope, VarDef
from .report import Report, Source
from .template import ScriptText, Template

NS = "pdstack:"

# The reference's values (spec §2.2, §3.2) where a file leaves them out.
REF_GLOBAL_PORT_BASE, REF_BASE_API_PORT, REF_PROXY_PORT = 8000, 9000, 7000
REF_OFFSET_P, REF_OFFSET_D = 0, 100
DEFAULT_KEY = "~/.ssh/id_rsa"
PREFILL_BATCHED_TOKENS = 49152  # what pdstack passes (rendering/plan.py), as the bf16 template does
HCCL_BUFFSIZE = {"prefill": "50", "decode": "200"}
MODEL_EXTRA_CFG = {"prefill": profile.MODEL_EXTRA_CFG_PREFILL, "decode": profile.MODEL_EXTRA_CFG_DECODE}

PASSWORD_VARS = ("ansible_ssh_pass", "ansible_password", "ansible_ssh_password", "ansible_become_pass",
                 "ansible_become_password", "ansible_sudo_pass")
USER_VARS = ("ansible_user", "ansible_ssh_user")
PORT_VARS = ("ansible_port", "ansible_ssh_port")
KEY_VARS = ("ansible_ssh_private_key_file", "ansible_private_key_file")
# Inventory variables the import reads (the rest get a warning each).
READ_VARS = {"ansible_host", *USER_VARS, *PORT_VARS, *KEY_VARS, "node_rank", "kv_rank", "node_port", "api_port",
             "host_ip", "ascend_rt_visible_devices", "global_port_base", "base_api_port", "proxy_port",
             "port_offset", "ranktable_save_path", "role"}
NO_EQUIVALENT = {
    "ansible_ssh_common_args": "pdstack connects with its own SSH client and applies no ssh options; like "
                               "StrictHostKeyChecking=no, it checks no host key unless you pin one "
                               "(pdstack:ssh.hostKey)",
    "ansible_ssh_extra_args": "pdstack connects with its own SSH client and applies no ssh options",
    "ansible_become": "pdstack does not use sudo: log in as root, or as a user that may run docker",
    "ansible_become_user": "pdstack does not use sudo: log in as root, or as a user that may run docker",
    "ansible_become_method": "pdstack does not use sudo: log in as root, or as a user that may run docker",
    "ansible_connection": "pdstack always connects over SSH",
    "ansible_python_interpreter": "pdstack needs no Python on the hosts",
    "etcd_port": "pdstack runs no etcd (a later upstream template's service)",
    "mooncake_master_port": "pdstack runs no mooncake master (a later upstream template's service)",
    "mooncake_metrics_port": "pdstack runs no mooncake master (a later upstream template's service)",
}

# Template `environment:` variables: name -> (stack key it sets, or None and why not).
ENV_KEYS = {
    "LOG_PATH": "pdstack:paths.logs", "SCRIPTS_PATH": "pdstack:paths.scripts", "MODEL_PATH": "pdstack:model.path",
    "DOCKER_IMAGE_ID": "pdstack:image", "DOCKER_NAME_P": "pdstack:containers.prefill",
    "DOCKER_NAME_D": "pdstack:containers.decode", "DOCKER_NAME_C": "pdstack:containers.proxy",
    "MODEL_LEN_MAX_PREFILL": "pdstack:prefill[].engine.maxModelLen",
    "MODEL_LEN_MAX_DECODE": "pdstack:decode[].engine.maxModelLen",
    "DECODE_TENSOR_PARALLEL_SIZE": "pdstack:decode[].tensorParallel",
    "PREFILL_LB_SDK": "pdstack:proxy.prefillPolicy", "DECODE_LB_SDK": "pdstack:proxy.decodePolicy",
}
ENV_UNUSED = {
    "CODE_PATH": "pdstack runs the code baked into the image and copies none from the hosts (the reference copied "
                 "CODE_PATH/omniinfer into the proxy container only)",
    "LOG_PATH_IN_EXECUTOR": "the a3_ds template never uses it; pdstack leaves logs on the hosts "
                            "(`pulumi stack output logs` says where)",
    "HTTP_PROXY": "pdstack downloads nothing on the hosts (the proxy's nginx is the one in the image)",
    "USE_OMNI_PROXY": "pdstack runs the global proxy (global_proxy.sh with the image's nginx), not Omni Proxy",
}


@dataclass(frozen=True)
class Options:
    image: str | None = None  # replaces (or stands in for) DOCKER_IMAGE_ID
    readiness_timeout: int = 1800  # first starts compile graphs: as the examples for real clusters


@dataclass
class Mapped:
    config: dict[str, Any]  # "pdstack:…" -> value, in the order of the examples
    provenance: dict[str, Source]  # stack key path (as ConfigError names them) -> where it came from
    report: Report
    host_origins: dict[str, list[str]] = field(default_factory=dict)  # pdstack host -> inventory hosts
    instance_origins: dict[str, str] = field(default_factory=dict)  # instance -> how it was formed

    def source_of(self, path: str) -> Source | None:
        """Where the value at a stack key path (or the nearest enclosing key) came from."""
        while path:
            if path in self.provenance:
                return self.provenance[path]
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= len(NS):
                return None
            path = path[:cut]
        return None


@dataclass
class _Node:
    """One inventory host of group P, D or C, with its address."""
    name: str  # inventory host name
    role: str  # "P", "D" or "C"
    source: Source
    order: int
    scope: Scope
    address: str
    host: str = ""  # the pdstack host it maps to


class _Unset:
    pass


UNSET = _Unset()


def map_inputs(inv: Inventory, template: Template | None, options: Options, report: Report) -> Mapped:
    return _Mapper(inv, template, options, report).run()


class _Mapper:
    def __init__(self, inv: Inventory, template: Template | None, options: Options, report: Report):
        self.inv = inv
        self.tmpl = template
        self.options = options
        self.report = report
        self.prov: dict[str, Source] = {}
        self.used: set[str] = set()  # variable names some template or rule read
        self.mapped = Mapped({}, self.prov, report)

    # -------------------------------------------------------------------------------------------
    def run(self) -> Mapped:
        self._refuse_passwords()
        if "config" in self.inv.groups and not {"P", "D"} & set(self.inv.groups):
            self.report.error(Source(self.inv.path), "this looks like a Pulumi stack config, not an Ansible inventory")
            self.report.check()
        for group in ("P", "D"):
            if group not in self.inv.groups:
                self.report.error(Source(self.inv.path), f"no group {group}: the playbook's groups are P (prefill), "
                                                         "D (decode) and C (proxy), under all.children")
            elif not self.inv.members(group):
                self.report.error(self.inv.groups[group].source, f"group {group} has no hosts")
        self.report.check()
        nodes = {role: [self._node(name, role) for name in self.inv.members(role)] for role in ("P", "D", "C")}
        self.report.check()
        hosts = self._hosts(nodes)
        self.report.check()
        ports = self._port_bases(nodes)
        prefill = self._prefill(nodes["P"])
        decode = self._decode(nodes["D"])
        self.report.check()
        proxy = self._proxy(nodes, prefill)
        self._check_ports(prefill, decode, ports)
        env = self._template_env()
        self._engines(prefill, decode, env)
        self.report.check()
        self._assemble(hosts, prefill, decode, proxy, ports, env)
        self._unread_variables(nodes)
        return self.mapped

    # -------------------------------------------------------------------------------------------
    # Evaluation helpers

    def _eval(self, scope: Scope, name: str) -> tuple[Any, VarDef | None, str | None]:
        """(value, definition, problem): value UNSET when undefined or not evaluable (then problem says why)."""
        self.used.add(name)
        definition = scope.vars.get(name)
        if definition is None:
            return UNSET, None, None
        try:
            value = scope.value(definition.value)
        except expr.Unsupported as why:
            return UNSET, definition, str(why)
        return value, definition, None

    def _int(self, scope: Scope, name: str, derived: int | None, explain: str) -> tuple[int | None, VarDef | None]:
        """An integer variable; a value the import cannot evaluate is a warning naming what is used instead."""
        value, definition, problem = self._eval(scope, name)
        if definition is None:
            return None, None
        instead = f"pdstack uses {derived} ({explain})" if derived is not None else f"pdstack {explain}"
        if problem is not None:
            self.report.warn(definition.source, f"{name}: {_raw(definition.value)} cannot be evaluated by the "
                                                f"import ({problem}); {instead}")
            return None, definition
        number = _as_int(value)
        if number is None:
            self.report.warn(definition.source, f"{name}: {_raw(definition.value)} is not an integer; {instead}")
        return number, definition

    # -------------------------------------------------------------------------------------------
    # Inventory checks

    def _refuse_passwords(self) -> None:
        for d in self.inv.definitions():
            if d.name in PASSWORD_VARS:
                what = "use sudo passwords" if "become" in d.name or "sudo" in d.name else "log in with passwords"
                self.report.error(d.source, f"{d.name} ({d.where}): pdstack does not {what} (the value is not "
                                            "shown). Remove it and use a key: set ansible_ssh_private_key_file "
                                            "(imported as pdstack:ssh.privateKeyPath), or after the import store "
                                            "the key as a secret: bin/pulumi config set --secret --path "
                                            "pdstack:ssh.privateKey < KEYFILE")

    def _node(self, name: str, role: str) -> _Node | None:
        host = self.inv.hosts[name]
        scope = self.inv.scope(name)
        value, definition, problem = self._eval(scope, "ansible_host")
        group = {"P": "prefill", "D": "decode", "C": "proxy"}[role]
        if definition is None:
            self.report.error(host.source, f"host {name} (group {role}) has no ansible_host; give every {group} "
                                           "host its address, e.g. `ansible_host: 10.0.0.1`")
            return None
        if problem is not None:
            self.report.error(definition.source, f"ansible_host of {name}: {_raw(definition.value)} cannot be "
                                                 f"evaluated by the import ({problem}); write the address itself")
            return None
        address = str(value).strip()
        try:
            checks.address(address)
        except InvalidValue as bad:
            self.report.error(definition.source, f"ansible_host of {name}: {bad}")
            return None
        if role in ("P", "D") and not all(p.isdigit() for p in address.split(".")):
            self.report.error(definition.source, f"ansible_host of {name} is the DNS name {address!r}; {group} "
                                                 "hosts need an IPv4 address (it goes into the HCCL ranktables)")
            return None
        return _Node(name, role, host.source, host.order, scope, address)

    # -------------------------------------------------------------------------------------------
    # Hosts and SSH

    def _hosts(self, nodes: dict[str, list[_Node]]) -> dict[str, dict[str, Any]]:
        by_address: dict[str, _Node] = {}  # the first node at each address names the pdstack host
        names: dict[str, str] = {}  # pdstack host name -> inventory host name
        for role in ("P", "D", "C"):
            for node in nodes[role]:
                key = node.address.lower()
                first = by_address.get(key)
                if first is None or first.name == node.name:
                    if first is None:
                        by_address[key] = node
                        node.host = self._host_name(node, names)
                    else:
                        node.host = first.host
                    continue
                node.host = first.host
                self._shared_address(first, node)
        self.mapped.host_origins = {}
        for role in ("P", "D", "C"):
            for node in nodes[role]:
                origins = self.mapped.host_origins.setdefault(node.host, [])
                if node.name not in origins:
                    origins.append(node.name)

        primaries = list(by_address.values())
        own = {node.name: self._ssh_of(node.scope) for node in primaries}
        stack_ssh, stack_src = self._stack_ssh(primaries, own)
        hosts: dict[str, dict[str, Any]] = {}
        keyless = []
        for node in primaries:
            entry: dict[str, Any] = {"address": node.address}
            self.prov[f"{NS}hosts.{node.host}.address"] = node.scope.vars["ansible_host"].source
            values, sources = own[node.name]
            for key in ("user", "port", "privateKeyPath"):
                if values.get(key) is not None and values.get(key) != stack_ssh.get(key):
                    entry[key] = values[key]
                    self.prov[f"{NS}hosts.{node.host}.{key}"] = sources[key]
            if values.get("port") is None and stack_ssh.get("port") not in (None, 22):
                entry["port"] = 22  # ssh's default, which Ansible used for this host
            if values.get("user") is None and stack_ssh.get("user") is not None:
                self.report.note(node.source, f"{node.name} sets no ansible_user (Ansible used your local user "
                                              f"name); pdstack logs in as {stack_ssh['user']}, as for the other "
                                              "hosts")
            if values.get("privateKeyPath") is None:
                keyless.append(node)
            hosts[node.host] = entry
        for role in ("P", "D", "C"):
            for node in nodes[role]:
                primary = by_address[node.address.lower()]
                if primary.name != node.name:
                    self._compare_ssh(primary, node)
        ssh: dict[str, Any] = {}
        for key in ("user", "port", "privateKeyPath"):
            if stack_ssh.get(key) is not None:
                ssh[key] = stack_ssh[key]
                self.prov[f"{NS}ssh.{key}"] = stack_src[key]
        if "user" not in ssh:
            ssh["user"] = "root"
            self.report.note(Source(self.inv.path), "no ansible_user: pdstack logs in as root (Ansible would have "
                                                    "used your local user name)")
        if keyless:
            who = "any host" if len(keyless) == len(primaries) else "hosts " + ", ".join(n.name for n in keyless)
            if "privateKeyPath" not in ssh:
                ssh["privateKeyPath"] = DEFAULT_KEY
            self.report.warn(keyless[0].source,
                             f"no ansible_ssh_private_key_file for {who}: Ansible used ssh's defaults (agent, "
                             f"~/.ssh/id_*); pdstack needs a key and is given {ssh['privateKeyPath']}: change "
                             "pdstack:ssh.privateKeyPath, or store a key as a secret with bin/pulumi config set "
                             "--secret --path pdstack:ssh.privateKey < KEYFILE")
        self.mapped.config[f"{NS}ssh"] = ssh
        return hosts

    def _stack_ssh(self, primaries: list[_Node], own: dict[str, tuple[dict[str, Any], dict[str, Source]]]
                   ) -> tuple[dict[str, Any], dict[str, Source]]:
        """pdstack:ssh: all.vars where it sets a value, else the value most hosts share (fewest per-host keys)."""
        values, sources = self._ssh_of(self.inv.scope(None))
        for key in ("user", "port", "privateKeyPath"):
            if key in values:
                continue
            counts: dict[Any, int] = {}
            for node in primaries:
                value = own[node.name][0].get(key)  # None: the host leaves it to the defaults
                counts[value] = counts.get(value, 0) + 1
            best = max(counts, key=lambda v: counts[v])  # the first listed wins a tie
            if best is not None:
                values[key] = best
                sources[key] = next(own[n.name][1][key] for n in primaries if own[n.name][0].get(key) == best)
        return values, sources

    def _host_name(self, node: _Node, taken: dict[str, str]) -> str:
        name = node.name
        try:
            checks.host_name(name)
        except InvalidValue:
            name = re.sub(r"[^a-z0-9_-]+", "-", node.name.lower()).strip("-_")[:32].strip("-_") or "host"
        base, n = name, 2
        while name in taken:
            name = f"{base[:29]}-{n}"
            n += 1
        taken[name] = node.name
        if name != node.name:
            self.report.note(node.source, f"host {node.name!r} is named {name!r} in pdstack (host names are "
                                          "lowercase letters, digits, '-' and '_'); its containers are "
                                          f"<prefix>_{name}")
        return name

    def _shared_address(self, first: _Node, node: _Node) -> None:
        where = f"{node.name} ({node.source}) has the address {node.address} of {first.name} ({first.source})"
        role_word = {"P": "prefill", "D": "decode", "C": "proxy"}
        if node.role == "C":
            self.report.note(node.source, f"{node.name} shares {first.name}'s address {node.address}: pdstack lists "
                                          f"each machine once, so the proxy runs on host {first.host}: its "
                                          f"container is <DOCKER_NAME_C>_{first.host}, not "
                                          f"<DOCKER_NAME_C>_{node.name}")
        elif node.role == first.role:
            self.report.error(node.source, f"{where}: pdstack runs one {role_word[node.role]} container per "
                                           f"machine; give each {role_word[node.role]} host its own machine")
        else:
            self.report.warn(node.source, f"{where}: prefill and decode on one machine; pdstack names it "
                                          f"{first.host} and the two roles must use different devices")

    def _ssh_of(self, scope: Scope) -> tuple[dict[str, Any], dict[str, Source]]:
        values: dict[str, Any] = {}
        sources: dict[str, Source] = {}
        for key, names in (("user", USER_VARS), ("port", PORT_VARS), ("privateKeyPath", KEY_VARS)):
            for name in names:
                value, definition, problem = self._eval(scope, name)
                if definition is None:
                    continue
                if problem is not None:
                    self.report.warn(definition.source, f"{name}: {_raw(definition.value)} cannot be evaluated by "
                                                        f"the import ({problem}); not imported")
                    break
                if key == "port":
                    if _as_int(value) is None:
                        self.report.warn(definition.source, f"{name}: {_raw(definition.value)} is not a port "
                                                            "number; not imported")
                        break
                    values[key] = _as_int(value)
                else:
                    values[key] = str(value)
                sources[key] = definition.source
                break
        return values, sources

    def _compare_ssh(self, primary: _Node, node: _Node) -> None:
        mine, src = self._ssh_of(node.scope)
        theirs, _ = self._ssh_of(primary.scope)
        for key in ("user", "port", "privateKeyPath"):
            if mine.get(key) != theirs.get(key) and key in src:
                self.report.warn(src[key], f"{node.name} logs in with {key} {mine.get(key)!r} but shares its "
                                           f"machine with {primary.name} ({theirs.get(key)!r}); pdstack uses "
                                           f"{primary.name}'s")

    # -------------------------------------------------------------------------------------------
    # Instances

    def _devices(self, node: _Node) -> tuple[int, ...] | None:
        value, definition, problem = self._eval(node.scope, "ascend_rt_visible_devices")
        if definition is None:
            self.report.error(node.source, f"host {node.name} has no ascend_rt_visible_devices; set its NPU devices, "
                                           'e.g. ascend_rt_visible_devices: "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15"')
            return None
        if problem is not None:
            self.report.error(definition.source, f"ascend_rt_visible_devices of {node.name}: "
                                                 f"{_raw(definition.value)} cannot be evaluated by the import "
                                                 f"({problem}); list the ids")
            return None
        try:
            # A trailing comma breaks the reference's file names but means nothing else: read past it.
            devices = parse_devices(value.rstrip(", ") if isinstance(value, str) and value.strip() else value)
        except InvalidValue as bad:
            self.report.error(definition.source, f"ascend_rt_visible_devices of {node.name}: {bad}")
            return None
        if not (isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"\d+(,\d+)*", value))):
            self.report.warn(definition.source, f"ascend_rt_visible_devices of {node.name} is {_raw(value)}: the "
                                                "reference needs comma-separated ids without spaces, ranges or a "
                                                "trailing comma (its file names break); pdstack reads devices "
                                                f"{format_devices(devices)}")
        return devices

    def _instance_devices(self, role: str, members: list[_Node]) -> str | None:
        found = [(node, self._devices(node)) for node in members]
        if any(d is None for _, d in found):
            return None
        first_node, first = found[0]
        for node, devices in found[1:]:
            if devices != first:
                definition = node.scope.vars["ascend_rt_visible_devices"]
                self.report.error(definition.source, f"{node.name} uses devices {format_devices(devices)} but "
                                                     f"{first_node.name}, in the same {role} instance, uses "
                                                     f"{format_devices(first)}; pdstack runs the same devices on "
                                                     "every host of an instance")
                return None
        return format_devices(first)

    def _host_ip(self, node: _Node, group: str) -> str | None:
        value, definition, problem = self._eval(node.scope, "host_ip")
        if definition is None:
            self.report.warn(node.source, f"{node.name} has no host_ip (the address of its {group} instance's master)")
            return None
        if problem is not None:
            self.report.warn(definition.source, f"host_ip of {node.name}: {_raw(definition.value)} cannot be "
                                                f"evaluated by the import ({problem})")
            return None
        return str(value).strip()

    def _prefill(self, nodes: list[_Node]) -> list[dict[str, Any]]:
        info = {}
        for node in nodes:
            kv, kv_def = self._int(node.scope, "kv_rank", None, "orders instances by kv_rank where it can")
            nr, _ = self._int(node.scope, "node_rank", None, "orders the instance's hosts by inventory order")
            info[node.name] = (self._host_ip(node, "prefill"), kv, kv_def, nr)
        masters: dict[str, _Node] = {}
        for node in nodes:
            host_ip = info[node.name][0]
            if host_ip is not None and host_ip.lower() == node.address.lower():
                masters.setdefault(host_ip.lower(), node)
        by_kv = {info[m.name][1]: m for m in masters.values() if info[m.name][1] is not None}

        groups: dict[str, list[_Node]] = {}
        for node in nodes:
            host_ip, kv = info[node.name][0], info[node.name][1]
            if host_ip is not None:
                key = host_ip.lower()
            elif kv is not None and kv in by_kv:
                key = by_kv[kv].address.lower()
                self.report.warn(node.source, f"pdstack puts {node.name} into the instance of {by_kv[kv].name}, the "
                                              f"master with the same kv_rank {kv}")
            else:
                key = node.address.lower()
                self.report.warn(node.source, f"pdstack makes {node.name} a single-host prefill instance of its own")
            groups.setdefault(key, []).append(node)

        instances = []
        for key, members in groups.items():
            master = masters.get(key)
            if master is None:
                master = min(members, key=lambda n: (_rank(info[n.name][3]), n.order))
                for node in members:
                    definition = node.scope.vars.get("host_ip")
                    if definition is None or info[node.name][0] is None:
                        continue
                    then = (f"pdstack makes {master.name} the master of {', '.join(n.name for n in members)}"
                            if len(members) > 1 else f"pdstack makes {node.name} a single-host instance")
                    self.report.warn(definition.source, f"host_ip {info[node.name][0]} of {node.name} is not the "
                                                        "ansible_host of a prefill master (a P host whose host_ip "
                                                        "is its own ansible_host): the reference would leave this "
                                                        f"host out of every instance; {then}")
            ordered = [master] + sorted((n for n in members if n is not master),
                                        key=lambda n: (_rank(info[n.name][3]), n.order))
            instances.append({"master": master, "nodes": ordered, "kv": info[master.name][1]})

        self._reference_merge_order(nodes, info, masters)
        self._kv_ranks(instances, info)
        instances.sort(key=lambda i: (_rank(i["kv"]), i["master"].order))
        listed = sorted(instances, key=lambda i: i["master"].order)
        if [i["master"].name for i in listed] != [i["master"].name for i in instances]:
            self.report.note(instances[0]["master"].source, "prefill masters are not listed in kv_rank order; "
                                                            "pdstack orders instances by kv_rank (its kv rank is "
                                                            "the position)")
        out = []
        for k, inst in enumerate(instances):
            name = f"prefill-{k}"
            devices = self._instance_devices("prefill", inst["nodes"])
            out.append({"name": name, "hosts": [n.host for n in inst["nodes"]], "devices": devices,
                        "_nodes": inst["nodes"]})
            self.prov[f"{NS}prefill[{k}]"] = inst["master"].source
            how = f"P hosts with host_ip {inst['master'].address}"
            if inst["kv"] is not None:
                how += f", kv_rank {inst['kv']}"
            self.mapped.instance_origins[name] = how
        return out

    def _reference_merge_order(self, nodes: list[_Node], info: dict, masters: dict[str, _Node]) -> None:
        """§9.4: PREFILL_MERGE_RANKTABLE_LIST takes each master, then the hosts after it with its host_ip."""
        current: _Node | None = None
        for node in nodes:
            host_ip = info[node.name][0]
            if host_ip is not None and host_ip.lower() == node.address.lower():
                current = node
                continue
            master = masters.get((host_ip or "").lower())
            if master is None:
                continue  # already reported: no master at all
            if current is master:
                continue
            if master.order > node.order:
                self.report.warn(node.source, f"{node.name} is listed before its master {master.name} "
                                              f"({master.source}): the reference's ranktable merge would leave "
                                              f"{node.name} out of the instance (§9.4); pdstack puts it in "
                                              f"{master.name}'s instance, master first")
            else:
                self.report.warn(node.source, f"{node.name} belongs to {master.name}'s instance but is listed after "
                                              f"{current.name if current else '?'}, the master of another instance: "
                                              "the reference's ranktable merge needs an instance's hosts "
                                              f"contiguous and would leave {node.name} out (§9.4); pdstack keeps it "
                                              f"in {master.name}'s instance")

    def _kv_ranks(self, instances: list[dict[str, Any]], info: dict) -> None:
        for inst in instances:
            master = inst["master"]
            kv, kv_def = info[master.name][1], info[master.name][2]
            if kv_def is None:
                self.report.warn(master.source, f"prefill master {master.name} has no kv_rank (the reference needs "
                                                "it for its ports and engine id); pdstack uses the instance's "
                                                "position")
            for node in inst["nodes"][1:]:
                other, other_def = info[node.name][1], info[node.name][2]
                if other_def is not None and other != kv and kv is not None and other is not None:
                    self.report.warn(other_def.source, f"kv_rank {other} of {node.name} differs from {kv} of its "
                                                       f"master {master.name}: the reference needs one kv_rank per "
                                                       "instance (§9.6); pdstack uses the instance's")
        ranks = [i["kv"] for i in instances if i["kv"] is not None]
        if len(ranks) == len(instances) and sorted(ranks) != list(range(len(instances))):
            seen: set[int] = set()
            for inst in sorted(instances, key=lambda i: i["master"].order):
                definition = info[inst["master"].name][2]
                problem = ("is also another instance's" if inst["kv"] in seen else
                           f"is outside 0..{len(instances) - 1}" if not 0 <= inst["kv"] < len(instances) else None)
                seen.add(inst["kv"])
                if problem and definition is not None:
                    self.report.warn(definition.source, f"kv_rank {inst['kv']} of {inst['master'].name} {problem}: "
                                                        "the reference needs kv_rank 0..x-1 for x prefill "
                                                        "instances (§9.6); pdstack numbers instances 0..x-1 in "
                                                        "kv_rank order")

    def _decode(self, nodes: list[_Node]) -> list[dict[str, Any]]:
        by_name = {n.name: n for n in nodes}
        group = self.inv.groups["D"]
        sets: list[tuple[str, list[_Node], Source]] = []
        if group.children:
            in_children: set[str] = set()
            for child in group.children:
                members = [by_name[h] for h in self.inv.members(child) if h in by_name]
                in_children.update(n.name for n in members)
                if not members:
                    self.report.warn(self.inv.groups[child].source, f"decode group {child} has no hosts; skipped")
                    continue
                sets.append((f"group {child}", members, self.inv.groups[child].source))
            for node in nodes:
                if node.name not in in_children:
                    self.report.error(node.source, f"{node.name} is in group D but in none of its child groups "
                                                   f"({', '.join(group.children)}), which are the decode instances; "
                                                   "put it into one of them")
        else:
            sets.append(("group D", nodes, group.source))
        out = []
        for j, (how, members, source) in enumerate(sets):
            ordered = self._decode_order(members, how)
            name = f"decode-{j}"
            out.append({"name": name, "hosts": [n.host for n in ordered],
                        "devices": self._instance_devices("decode", ordered), "_nodes": ordered})
            self.prov[f"{NS}decode[{j}]"] = source
            self.mapped.instance_origins[name] = how
        return out

    def _decode_order(self, members: list[_Node], how: str) -> list[_Node]:
        """The instance's hosts: its DP master first, then the others by node_rank (then inventory order)."""
        host_ips = {n.name: self._host_ip(n, "decode") for n in members}
        ranks = {n.name: self._int(n.scope, "node_rank", None, "orders decode hosts by inventory order")[0]
                 for n in members}
        masters = [n for n in members if (host_ips[n.name] or "").lower() == n.address.lower()]
        if masters:
            master = masters[0]
            for other in masters[1:]:
                self.report.warn(other.scope.vars["host_ip"].source,
                                 f"{other.name} is a decode master too (host_ip is its own address), in the same "
                                 f"decode instance ({how}) as {master.name}: the reference runs one decode instance "
                                 f"with one DP master; pdstack imports one instance with master {master.name}. For "
                                 "several decode instances use child groups D0, D1, … of D")
        else:
            master = members[0]
            self.report.warn(master.source, f"no host of the decode instance ({how}) is its master (host_ip equal "
                                            f"to its own ansible_host); pdstack makes {master.name}, the first "
                                            "listed, the DP master")
        for node in members:
            host_ip = host_ips[node.name]
            if node in masters or host_ip is None:
                continue
            if host_ip.lower() != master.address.lower():
                self.report.warn(node.scope.vars["host_ip"].source,
                                 f"host_ip {host_ip} of {node.name} is not the address of its decode master "
                                 f"{master.name} ({master.address}): the reference would make it wait for a DP "
                                 f"master that is not there; pdstack uses {master.name}")
        if members[0] is not master:
            self.report.warn(master.source, f"decode master {master.name} is not listed first ({how}): the "
                                            f"reference gives {members[0].name} the first DP ranks; pdstack lists "
                                            "the master first (DP ranks from 0)")
        others = [n for n in members if n is not master]
        ordered = sorted(others, key=lambda n: (_rank(ranks[n.name]), n.order))
        for listed, placed in zip(others, ordered):
            if listed is not placed:
                self.report.warn(listed.source, f"{listed.name} is listed before {placed.name} but has a higher "
                                                f"node_rank: the reference numbers DP ranks in inventory order and API "
                                                "ports by node_rank; pdstack orders decode hosts by node_rank, after "
                                                "the master")
                break
        return [master, *ordered]

    # -------------------------------------------------------------------------------------------
    # Proxy and ports

    def _proxy(self, nodes: dict[str, list[_Node]], prefill: list[dict[str, Any]]) -> dict[str, Any]:
        cs = nodes["C"]
        if not cs:
            master = prefill[0]["_nodes"][0]
            where = self.inv.groups["C"].source if "C" in self.inv.groups else Source(self.inv.path)
            self.report.warn(where, f"no proxy host (group C): pdstack runs the global proxy on {master.host}, the "
                                    "first prefill master, as the reference's sample inventory does")
            port, _ = self._proxy_port(None)
            return {"host": master.host, "port": port}
        for other in cs[1:]:
            self.report.warn(other.source, f"pdstack runs one global proxy, on {cs[0].host} ({cs[0].name}); "
                                           f"{other.name} is not imported")
        port, source = self._proxy_port(cs[0])
        self.prov[f"{NS}proxy.host"] = cs[0].source
        if source:
            self.prov[f"{NS}proxy.port"] = source
        return {"host": cs[0].host, "port": port}

    def _proxy_port(self, node: _Node | None) -> tuple[int, Source | None]:
        scope = node.scope if node else self.inv.scope(None)
        base, base_def = self._int(scope, "proxy_port", REF_PROXY_PORT, "the reference's value")
        rank, _ = self._int(scope, "node_rank", 0, "the proxy's node_rank 0") if node else (0, None)
        derived = (base if base is not None else REF_PROXY_PORT) + (rank or 0)
        if node is not None:
            port, port_def = self._int(scope, "node_port", derived, "proxy_port + node_rank")
            if port is not None:
                return port, port_def.source if port_def else None
        return derived, base_def.source if base_def else None

    def _port_bases(self, nodes: dict[str, list[_Node]]) -> dict[str, Any]:
        scope = nodes["P"][0].scope if nodes["P"] else self.inv.scope(None)
        bases = {}
        for name, ref in (("global_port_base", REF_GLOBAL_PORT_BASE), ("base_api_port", REF_BASE_API_PORT)):
            value, definition = self._int(scope, name, ref, "the reference's value")
            bases[name] = (value if value is not None else ref, definition)
        offsets = {"P": (REF_OFFSET_P, None), "D": (REF_OFFSET_D, None)}
        value, definition, problem = self._eval(scope, "port_offset")
        if problem is not None:
            self.report.warn(definition.source, f"port_offset: {_raw(definition.value)} cannot be evaluated by the "
                                                f"import ({problem}); pdstack uses P 0, D 100")
        elif definition is not None:
            if not isinstance(value, dict):
                self.report.warn(definition.source, "port_offset is not a map like {P: 0, D: 100}; pdstack uses P "
                                                    "0, D 100")
            else:
                for role in ("P", "D"):
                    line = getattr(value, "key_lines", {}).get(role)
                    source = Source(definition.source.file, line) if line else definition.source
                    try:
                        raw = scope.value(value.get(role)) if role in value else None
                    except expr.Unsupported:
                        raw = None
                    number = _as_int(raw)
                    if role in value and number is None:
                        self.report.warn(source, f"port_offset.{role}: {_raw(value[role])} is not an integer the "
                                                 f"import can evaluate; pdstack uses {offsets[role][0]}")
                    elif number is not None:
                        offsets[role] = (number, source)
        off_p, off_d = offsets["P"][0], offsets["D"][0]
        ports = {"masterBase": bases["global_port_base"][0] + off_p, "apiBase": bases["base_api_port"][0] + off_p}
        for key, var in (("masterBase", "global_port_base"), ("apiBase", "base_api_port")):
            if bases[var][1] is not None:
                self.prov[f"{NS}ports.{key}"] = bases[var][1].source
        decode_shift = off_d - off_p - DECODE_PORT_OFFSET
        if decode_shift:
            self.report.warn(offsets["D"][1] or Source(self.inv.path),
                             f"port_offset.D is {off_d} with port_offset.P {off_p}: pdstack puts decode ports "
                             f"{DECODE_PORT_OFFSET} above prefill's (decode DP master {ports['masterBase'] + 100}, "
                             f"API {ports['apiBase'] + 100}+), not {off_d - off_p}")
        return {"ports": ports, "decode_shift": decode_shift}

    def _check_ports(self, prefill: list[dict[str, Any]], decode: list[dict[str, Any]], ports: dict[str, Any]) -> None:
        base = ports["ports"]
        shift = ports["decode_shift"]
        for k, inst in enumerate(prefill):
            for node in inst["_nodes"]:
                self._check_port(node, "node_port", base["masterBase"] + k, f"DP RPC port of {inst['name']}: "
                                 "masterBase + its kv rank", 0)
                self._check_port(node, "api_port", base["apiBase"] + k, f"API port of {inst['name']}: apiBase + its kv "
                                 "rank", 0)
        for j, inst in enumerate(decode):
            for rank, node in enumerate(inst["_nodes"]):
                self._check_port(node, "node_port", base["masterBase"] + DECODE_PORT_OFFSET + j,
                                 f"DP master port of {inst['name']}: masterBase + 100 + {j}", shift)
                self._check_port(node, "api_port", base["apiBase"] + DECODE_PORT_OFFSET + rank,
                                 f"first API port of {node.host}, at position {rank} of {inst['name']}: apiBase + "
                                 f"100 + {rank}", shift)

    def _check_port(self, node: _Node, var: str, derived: int, explain: str, explained_shift: int) -> None:
        value, definition = self._int(node.scope, var, derived, explain)
        if value is None or value == derived:
            return
        if explained_shift and value - derived == explained_shift:
            return  # the port_offset.D warning covers it
        origin = f" (from {_raw(definition.value)})" if definition.value != value else ""
        self.report.warn(definition.source, f"{var} of {node.name} is {value}{origin}; pdstack uses {derived} "
                                            f"({explain})")

    # -------------------------------------------------------------------------------------------
    # Template

    def _template_env(self) -> dict[str, tuple[Any, Source]]:
        """Template variable -> (value, source), for the variables that have a stack key."""
        found: dict[str, tuple[Any, Source]] = {}
        if self.tmpl is None:
            return found
        scope = self.inv.scope(None, self.tmpl.play_vars)
        for name, definition in self.tmpl.env.items():
            if name in ENV_UNUSED:
                self._unused_env(name, definition, scope)
                continue
            if name not in ENV_KEYS:
                self.report.warn(definition.source, f"{name} is not a variable of the a3_ds template; pdstack has "
                                                    "no equivalent and does not pass it to the containers (use "
                                                    "engine.env of an instance if the engine needs it)")
                continue
            try:
                value = scope.value(definition.value)
            except expr.Unsupported as why:
                self.report.warn(definition.source, f"{name}: {_raw(definition.value)} cannot be evaluated by the "
                                                    f"import ({why}); pdstack uses its default for {ENV_KEYS[name]}")
                continue
            if value is None:
                self.report.warn(definition.source, f"{name} is empty; pdstack uses its default for {ENV_KEYS[name]}")
                continue
            found[name] = (value, definition.source)
        for name, definition in self.tmpl.play_vars.items():
            if name == "ranktable_save_path":
                try:
                    found[name] = (scope.value(definition.value), definition.source)
                except expr.Unsupported as why:
                    self.report.warn(definition.source, f"ranktable_save_path: {_raw(definition.value)} cannot be "
                                                        f"evaluated by the import ({why}); pdstack uses its default")
        if "ranktable_save_path" not in found and "ranktable_save_path" in self.inv.all_vars:
            definition = self.inv.all_vars["ranktable_save_path"]
            found["ranktable_save_path"] = (definition.value, definition.source)
        return found

    def _unused_env(self, name: str, definition: VarDef, scope: Scope) -> None:
        why = ENV_UNUSED[name]
        if name == "USE_OMNI_PROXY":
            try:
                on = str(scope.value(definition.value)).strip() == "1"
            except expr.Unsupported:
                on = True
            if on:
                self.report.warn(definition.source, f"USE_OMNI_PROXY is 1: {why}; the deployment will use the "
                                                    "global proxy with prefix caching off, as with USE_OMNI_PROXY=0")
                return
        self.report.warn(definition.source, f"{name} has no pdstack equivalent: {why}; not imported")

    def _engines(self, prefill: list[dict[str, Any]], decode: list[dict[str, Any]],
                 env: dict[str, tuple[Any, Source]]) -> None:
        for role, instances, var in (("prefill", prefill, "MODEL_LEN_MAX_PREFILL"),
                                     ("decode", decode, "MODEL_LEN_MAX_DECODE")):
            engine: dict[str, Any] = {}
            sources: dict[str, Source] = {}
            if var in env:
                value, source = env[var]
                number = _as_int(value)
                if number is None:
                    self.report.error(source, f"{var} is {_raw(value)}, not a number of tokens")
                else:
                    engine["maxModelLen"], sources["maxModelLen"] = number, source
            if self.tmpl is not None and role in self.tmpl.scripts:
                self._scan_script(role, self.tmpl.scripts[role], engine, sources)
            for i, inst in enumerate(instances):
                if engine:
                    inst["engine"] = dict(engine)
                    for key, source in sources.items():
                        self.prov[f"{NS}{role}[{i}].engine.{key}"] = source
        if "DECODE_TENSOR_PARALLEL_SIZE" in env:
            value, source = env["DECODE_TENSOR_PARALLEL_SIZE"]
            number = _as_int(value)
            if number is None:
                self.report.error(source, f"DECODE_TENSOR_PARALLEL_SIZE is {_raw(value)}, not a number")
            else:
                for j, inst in enumerate(decode):
                    inst["tensorParallel"] = number
                    self.prov[f"{NS}decode[{j}].tensorParallel"] = source

    def _scan_script(self, role: str, script: ScriptText, engine: dict[str, Any], sources: dict[str, Source]) -> None:
        """Settings the template's run script hard-codes (GPU_UTIL, --max-num-seqs, …) that pdstack can carry."""
        text = script.text
        what = f"{script.dest} in the template"

        def values(pattern: str) -> list[tuple[str, int]]:
            return [(m.group(1), m.start(1)) for m in re.finditer(pattern, text)]

        def single(pattern: str, name: str) -> tuple[str, int] | None:
            found = values(pattern)
            if not found:
                return None
            distinct = {v for v, _ in found}
            if len(distinct) > 1:
                self.report.warn(script.at(found[1][1]), f"{what} sets {name} to {', '.join(sorted(distinct))} in "
                                                         f"different branches; pdstack uses {found[0][0]}")
            return found[0]

        hit = single(r"--max-num-seqs[= ]+(\d+)", "--max-num-seqs")
        if hit:
            engine["maxNumSeqs"], sources["maxNumSeqs"] = int(hit[0]), script.at(hit[1])
        hit = single(r"\bGPU_UTIL=[\"']?([0-9]*\.?[0-9]+)", "GPU_UTIL")
        if hit:
            engine["gpuMemoryUtilization"], sources["gpuMemoryUtilization"] = float(hit[0]), script.at(hit[1])
        extra: list[str] = []
        if role == "prefill":
            for flag in ("--max-num-batched-tokens", "--long-prefill-token-threshold"):
                hit = single(re.escape(flag) + r"[= ]+(\d+)", flag)
                if hit and int(hit[0]) != PREFILL_BATCHED_TOKENS:
                    extra += [flag, hit[0]]
                    sources["extraArgs"] = script.at(hit[1])
                    self.report.note(script.at(hit[1]), f"{what} passes {flag} {hit[0]}; pdstack passes "
                                                        f"{PREFILL_BATCHED_TOKENS}, so the import adds it to "
                                                        "engine.extraArgs (the later value wins)")
        if extra:
            engine["extraArgs"] = extra
        env: dict[str, str] = {}
        hit = single(r"\bHCCL_BUFFSIZE=[\"']?(\d+)", "HCCL_BUFFSIZE")
        if hit and hit[0] != HCCL_BUFFSIZE[role]:
            env["HCCL_BUFFSIZE"], sources["env"] = hit[0], script.at(hit[1])
        hit = single(r"\bMODEL_EXTRA_CFG_PATH=[\"']?([^\s\"';]+)", "MODEL_EXTRA_CFG_PATH")
        if hit and hit[0] != MODEL_EXTRA_CFG[role]:
            env["MODEL_EXTRA_CFG_PATH"], sources["env"] = hit[0], script.at(hit[1])
        if env:
            engine["env"] = env

    # -------------------------------------------------------------------------------------------
    # The config

    def _assemble(self, hosts, prefill, decode, proxy, ports, env) -> None:
        config = self.mapped.config
        ssh = config.pop(f"{NS}ssh")
        image = self._image(env)
        config[f"{NS}image"] = image
        config[f"{NS}ssh"] = ssh
        config[f"{NS}hosts"] = hosts
        config[f"{NS}prefill"] = [_public(i) for i in prefill]
        config[f"{NS}decode"] = [_public(i, decode=True) for i in decode]
        for var, key in (("PREFILL_LB_SDK", "prefillPolicy"), ("DECODE_LB_SDK", "decodePolicy")):
            if var in env:
                value, source = env[var]
                policy = str(value).strip()
                if policy not in profile.PROXY_POLICIES:
                    self.report.warn(source, f"{var} {policy!r} is not a balancing policy global_proxy.sh knows; it "
                                             "falls back to least_conn, and so does the import")
                    policy = "least_conn"
                proxy[key] = policy
                self.prov[f"{NS}proxy.{key}"] = source
        config[f"{NS}proxy"] = proxy
        config[f"{NS}ports"] = ports["ports"]
        paths = {}
        for var, key in (("LOG_PATH", "logs"), ("SCRIPTS_PATH", "scripts"), ("ranktable_save_path", "ranktables")):
            if var in env:
                paths[key] = _path(env[var][0])
                self.prov[f"{NS}paths.{key}"] = env[var][1]
        if paths:
            config[f"{NS}paths"] = paths
        if "LOG_PATH" in env:
            self.report.note(env["LOG_PATH"][1], "pdstack writes each container's logs to "
                                                 f"{paths['logs']}/<container name>/ (the reference wrote "
                                                 "server_<rank>.log into LOG_PATH itself)")
        if "MODEL_PATH" in env:
            config[f"{NS}model"] = {"path": _path(env["MODEL_PATH"][0]), "servedName": "deepseek"}
            self.prov[f"{NS}model.path"] = env["MODEL_PATH"][1]
        containers = {}
        for var, key in (("DOCKER_NAME_P", "prefill"), ("DOCKER_NAME_D", "decode"), ("DOCKER_NAME_C", "proxy")):
            if var in env:
                containers[key] = str(env[var][0]).strip()
                self.prov[f"{NS}containers.{key}"] = env[var][1]
        if containers:
            config[f"{NS}containers"] = containers
        if self.tmpl is None:
            self.report.note(Source(self.inv.path), "no server template given: paths, model, container names and "
                                                    "engine settings keep pdstack's defaults (README, Stack config "
                                                    "reference)")
        config[f"{NS}readiness"] = {"timeoutSeconds": self.options.readiness_timeout}

    def _image(self, env: dict[str, tuple[Any, Source]]) -> str:
        given = env.get("DOCKER_IMAGE_ID")
        if self.options.image:
            if given and str(given[0]).strip() != self.options.image:
                self.report.note(given[1], f"--image {self.options.image} replaces DOCKER_IMAGE_ID {given[0]}")
            return self.options.image
        if given is None:
            where = self.tmpl.source if self.tmpl else Source(self.inv.path)
            self.report.error(where, "no image: set DOCKER_IMAGE_ID in the template's environment block, or pass "
                                     "--image REGISTRY/NAME:TAG")
            self.report.check()
        value, source = given
        image = str(value).strip()
        try:
            check_image_ref(image)
        except InvalidValue as bad:
            self.report.error(source, f"DOCKER_IMAGE_ID: {bad}; set it to the image the hosts pull, or pass --image")
            self.report.check()
        self.prov[f"{NS}image"] = source
        return image

    def _unread_variables(self, nodes: dict[str, list[_Node]]) -> None:
        imported = {n.name for role in nodes.values() for n in role}
        relevant_groups = {"all"} | {g for role in ("P", "D", "C") for g in self._descendants(role)}
        for host in sorted(self.inv.hosts.values(), key=lambda h: h.order):
            if host.name not in imported:
                self.report.warn(host.source, f"host {host.name} is in none of the groups P, D, C, which are all "
                                              "the playbook deploys; not imported")
        used = self.used | self.inv.used
        for definition in self.inv.definitions():
            owner = definition.where.removeprefix("host ").removeprefix("group ")
            if definition.where.startswith("host ") and owner not in imported:
                continue
            if definition.where.startswith("group ") and owner not in relevant_groups and \
                    not any(h in imported for h in self.inv.members(owner)):
                continue
            name = definition.name
            if name in PASSWORD_VARS:
                continue
            if name == "role":
                self.report.note(definition.source, "role is not used by the playbook, nor by pdstack (group "
                                                    "membership says what a host runs)")
            elif name in NO_EQUIVALENT:
                self.report.warn(definition.source, f"{name} has no pdstack equivalent: {NO_EQUIVALENT[name]}; not "
                                                    "imported")
            elif name not in READ_VARS and name not in used:
                self.report.warn(definition.source, f"{name} ({definition.where}) is not used by the a3_ds playbook "
                                                    "and has no pdstack equivalent; not imported")
        if self.tmpl is not None:
            for name, definition in self.tmpl.play_vars.items():
                if name != "ranktable_save_path" and name not in used:
                    self.report.warn(definition.source, f"play variable {name} has no pdstack equivalent; not imported")

    def _descendants(self, group: str) -> set[str]:
        out, todo = set(), [group]
        while todo:
            name = todo.pop()
            if name in out or name not in self.inv.groups:
                continue
            out.add(name)
            todo += self.inv.groups[name].children
        return out


def _public(inst: dict[str, Any], decode: bool = False) -> dict[str, Any]:
    out = {"name": inst["name"], "hosts": inst["hosts"], "devices": inst["devices"]}
    if decode:
        out["tensorParallel"] = inst.get("tensorParallel", 1)
    if "engine" in inst:
        out["engine"] = inst["engine"]
    return out


def _path(value: Any) -> str:
    text = str(value).strip()
    return text.rstrip("/") or "/"


def _rank(value: int | None) -> float:
    return value if value is not None else float("inf")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _raw(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:79] + "…"

