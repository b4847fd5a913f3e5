"""An Ansible YAML inventory as the reference playbook sees it: groups, hosts and the variables each host
ends up with (all.vars < parent group vars < child group vars < host vars), each with its line.

Only what the import needs: no host patterns (`node[1:4]`), no INI format, no inventory plugins.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import expr
from .report import Report, Source, fail
from .yamlfile import Loaded, Vaulted, YList, YMap, load

GROUP_KEYS = ("hosts", "vars", "children")
_RANGE = re.compile(r"\[[^\]]*:[^\]]*\]")
_INI_SECTION = re.compile(r"^\s*\[[^\]]+\]\s*$", re.M)
_MAX_DEPTH = 20  # templates referring to templates; deeper means a cycle


@dataclass(frozen=True)
class VarDef:
    name: str
    value: Any
    source: Source
    where: str  # "all.vars", "group P", "host p0": where the value is set


@dataclass
class Group:
    name: str
    source: Source
    depth: int
    hosts: list[str] = field(default_factory=list)  # direct members, in file order
    children: list[str] = field(default_factory=list)
    vars: dict[str, VarDef] = field(default_factory=dict)


@dataclass
class InvHost:
    name: str
    source: Source  # where the host is first listed
    order: int  # position of its first listing in the file
    own_vars: dict[str, VarDef] = field(default_factory=dict)


@dataclass
class Inventory:
    path: str
    groups: dict[str, Group]
    hosts: dict[str, InvHost]
    all_vars: dict[str, VarDef]
    used: set[str] = field(default_factory=set)  # names some template looked up

    def members(self, group: str) -> list[str]:
        """Every host in the group or its descendants, in file order (as `groups['X']` lists them)."""
        found: set[str] = set()
        seen: set[str] = set()

        def walk(name: str) -> None:
            if name in seen or name not in self.groups:
                return
            seen.add(name)
            found.update(self.groups[name].hosts)
            for child in self.groups[name].children:
                walk(child)

        walk(group)
        return sorted(found, key=lambda h: self.hosts[h].order)

    def groups_of(self, host: str) -> list[Group]:
        """The groups a host belongs to, directly or through a child group, in variable precedence order."""
        out = [g for g in self.groups.values() if g.name != "all" and host in self.members(g.name)]
        return sorted(out, key=lambda g: (g.depth, g.name))

    def vars_of(self, host: str) -> dict[str, VarDef]:
        merged = dict(self.all_vars)
        for group in self.groups_of(host):
            merged.update(group.vars)
        merged.update(self.hosts[host].own_vars)
        return merged

    def definitions(self) -> list[VarDef]:
        """Every variable as written, each once: all.vars, then group vars, then host vars."""
        out = list(self.all_vars.values())
        for group in self.groups.values():
            if group.name != "all":
                out += group.vars.values()
        for host in sorted(self.hosts.values(), key=lambda h: h.order):
            out += host.own_vars.values()
        return out

    def scope(self, host: str | None, extra: dict[str, VarDef] | None = None) -> "Scope":
        return Scope(self, host, extra or {})


class Scope:
    """Variable lookup for one host, evaluating templated values on demand (as Ansible does lazily)."""

    def __init__(self, inventory: Inventory, host: str | None, extra: dict[str, VarDef],
                 depth: list[int] | None = None):
        self.inventory = inventory
        self.host = host
        self.extra = extra
        self.vars = {**(inventory.vars_of(host) if host else inventory.all_vars), **extra}
        self.depth = depth if depth is not None else [0]  # shared with the scopes hostvars opens from here

    def lookup(self, name: str) -> Any:
        self.inventory.used.add(name)
        if name == "inventory_hostname" and self.host:
            return self.host
        if name == "hostvars":
            return _HostVars(self)
        if name not in self.vars:
            raise expr.Unsupported(f"{name} is not defined" + (f" for host {self.host}" if self.host else ""))
        return self.value(self.vars[name].value)

    def item(self, name: Any) -> Any:  # hostvars['p0'].ansible_host
        return self.lookup(str(name))

    def value(self, raw: Any) -> Any:
        """A raw value with its templates evaluated (nested maps too, as `port_offset.P` is read through them)."""
        if isinstance(raw, Vaulted):
            raise expr.Unsupported("the value is encrypted with ansible-vault")
        if not expr.has_template(raw):
            return raw
        if self.depth[0] > _MAX_DEPTH:
            raise expr.Unsupported("the templates refer to each other in a cycle")
        self.depth[0] += 1
        try:
            return expr.render(raw, self.lookup)
        finally:
            self.depth[0] -= 1

    def evaluate(self, name: str) -> tuple[Any, VarDef | None]:
        """(value, definition) of a variable; value None when undefined. Raises Unsupported for templates
        this evaluator cannot follow."""
        definition = self.vars.get(name)
        if definition is None:
            return None, None
        return self.value(definition.value), definition


class _HostVars:
    def __init__(self, scope: Scope):
        self.scope = scope

    def item(self, name: Any) -> Scope:
        if name not in self.scope.inventory.hosts:
            raise expr.Unsupported(f"hostvars has no host {name!r}")
        return Scope(self.scope.inventory, str(name), self.scope.extra, self.scope.depth)


def _ini_hint(text: str) -> str | None:
    if _INI_SECTION.search(text):
        return ("it looks like an INI inventory; pdstack reads YAML inventories: convert it with "
                "`ansible-inventory -i INVENTORY -y --list > inventory.yml`")
    return None


def read(path: str, report: Report) -> Inventory:
    """Reads an inventory; raises ImportFailed (file and line) when its structure is not an inventory's."""
    loaded = load(path, "inventory", hint=_ini_hint)
    doc = loaded.doc
    if doc is None:
        raise fail(loaded.at(None), "the inventory is empty; expected groups P, D and C under all.children")
    if not isinstance(doc, YMap):
        advice = _ini_hint(doc) if isinstance(doc, str) else None
        raise fail(loaded.at(getattr(doc, "line", 1)),
                   "the inventory is not a map of groups (expected "
                   "`all: {vars: …, children: {P: …, D: …, C: …}}`)"
                   + (f"; {advice}" if advice else ""))
    for key, first, again in loaded.duplicates:
        report.warn(loaded.at(again), f"{key!r} is also set at line {first}; YAML keeps only this later one, as "
                                      "Ansible does")
    inv = Inventory(path, {}, {}, {})
    reader = _Reader(loaded, inv, report)
    problems_before = len(report.problems)
    for name, value in doc.items():
        if name == "all":
            reader.group("all", value, doc, name, depth=0)
        else:  # top-level groups other than `all` are its children
            reader.group(str(name), value, doc, name, depth=1)
    if "all" in inv.groups:
        inv.all_vars = inv.groups["all"].vars
    if len(report.problems) > problems_before:
        report.check()
    return inv


class _Reader:
    def __init__(self, loaded: Loaded, inv: Inventory, report: Report):
        self.loaded = loaded
        self.inv = inv
        self.report = report
        self.order = 0

    def at(self, block: YMap | YList, key: Any = None) -> Source:
        if key is not None and isinstance(block, YMap) and key in block.key_lines:
            return self.loaded.at(block.key_lines[key])
        return self.loaded.at(block.line)

    def group(self, name: str, value: Any, parent: YMap, key: Any, depth: int) -> None:
        if depth > _MAX_DEPTH:
            self.report.error(self.at(parent, key), f"group {name} is nested too deeply")
            return
        group = self.inv.groups.get(name)
        if group is None:
            group = self.inv.groups[name] = Group(name, self.at(parent, key), depth)
        group.depth = min(group.depth, depth)
        if value is None:
            return
        if not isinstance(value, YMap):
            self.report.error(self.at(parent, key), f"group {name} must be a map with hosts, vars or children; "
                                                     f"got {_kind(value)}")
            return
        for k in value:
            if k not in GROUP_KEYS:
                self.report.warn(self.at(value, k), f"{k!r} in group {name} is not one of hosts, vars, children; "
                                                    "Ansible skips it and so does the import")
        if value.get("vars") is not None:
            group.vars.update(self.vars(value["vars"], value, "vars", "all.vars" if name == "all" else f"group {name}"))
        hosts = value.get("hosts")
        if hosts is not None:
            if not isinstance(hosts, YMap):
                self.report.error(self.at(value, "hosts"), f"the hosts of group {name} must be a map of host name to "
                                                           f"its vars (`p0: {{ansible_host: 10.0.0.1}}`); got "
                                                           f"{_kind(hosts)}")
            else:
                for host_name, host_vars in hosts.items():
                    self.host(str(host_name), host_vars, hosts, host_name, group)
        children = value.get("children")
        if children is not None:
            if not isinstance(children, YMap):
                self.report.error(self.at(value, "children"), f"the children of group {name} must be a map of group "
                                                              f"name to group; got {_kind(children)}")
            else:
                for child_name, child in children.items():
                    child_name = str(child_name)
                    if child_name not in group.children:
                        group.children.append(child_name)
                    self.group(child_name, child, children, child_name, depth + 1)

    def host(self, name: str, value: Any, hosts: YMap, key: Any, group: Group) -> None:
        source = self.at(hosts, key)
        if _RANGE.search(name):
            self.report.error(source, f"host pattern {name!r} is a range; list each host on its own")
            return
        host = self.inv.hosts.get(name)
        if host is None:
            host = self.inv.hosts[name] = InvHost(name, source, self.order)
            self.order += 1
        if name not in group.hosts:
            group.hosts.append(name)
        if value is None:
            return
        if not isinstance(value, YMap):
            self.report.error(source, f"the vars of host {name} must be a map like {{ansible_host: 10.0.0.1}}; got "
                                      f"{_kind(value)}")
            return
        host.own_vars.update(self.vars(value, hosts, key, f"host {name}"))

    def vars(self, value: Any, parent: YMap, key: Any, where: str) -> dict[str, VarDef]:
        if not isinstance(value, YMap):
            self.report.error(self.at(parent, key), f"the vars of {where} must be a map of name to value; got "
                                                    f"{_kind(value)}")
            return {}
        return {str(k): VarDef(str(k), v, self.at(value, k), where) for k, v in value.items()}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (list, YList)):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    return f"the {type(value).__name__} {value!r}"[:80]
