"""`python -m pdstack import-ansible`: an Omni-Infer Ansible inventory (+ server template) -> a stack config.

inventory.py and template.py read the files (every value with its line), mapping.py applies the README's
mapping table, output.py writes `Pulumi.<stack>.yaml` and the summary. No Pulumi imports: the result is
checked with the same `parse_cluster` a deployment uses.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..config.model import ClusterSpec
from ..config.parse import ConfigError, parse_cluster
from . import inventory, mapping, template
from .mapping import Mapped, Options
from .report import ImportFailed, Problem, Report, Source

__all__ = ["ImportFailed", "Imported", "Options", "import_ansible"]


@dataclass(frozen=True)
class Imported:
    mapped: Mapped
    spec: ClusterSpec
    inventory: str
    template: str | None

    @property
    def report(self) -> Report:
        return self.mapped.report


def import_ansible(inventory_path: str, template_path: str | None = None, options: Options = Options()) -> Imported:
    """Reads, maps and validates; raises ImportFailed (every problem with its file and line) when it cannot."""
    report = Report()
    inv = inventory.read(inventory_path, report)
    tmpl = template.read(template_path, report) if template_path else None
    report.check()
    mapped = mapping.map_inputs(inv, tmpl, options, report)
    try:
        spec = parse_cluster(mapped.config)
    except ConfigError as err:
        # What the imported values break, said in the stack config's words, pointing at where each came from.
        raise ImportFailed([Problem(mapped.source_of(i.path) or Source(inventory_path), str(i))
                            for i in err.issues]) from None
    _check_key_files(spec, mapped, inventory_path)
    return Imported(mapped, spec, inventory_path, template_path)


def _check_key_files(spec: ClusterSpec, mapped: Mapped, inventory_path: str) -> None:
    """A key file missing here is a warning, once per file: the deploying machine may be another one."""
    seen: set[str] = set()
    for host in spec.hosts:
        path = host.ssh.private_key_path
        if path is None or path in seen:
            continue
        seen.add(path)
        full = os.path.expanduser(path)
        if os.path.isfile(full) and os.access(full, os.R_OK):
            continue
        key = f"pdstack:hosts.{host.name}.privateKeyPath"
        source = mapped.provenance.get(key) or mapped.source_of("pdstack:ssh.privateKeyPath") or Source(inventory_path)
        mapped.report.warn(source, f"the key file {path} is not a readable file on this machine: `bin/pulumi preview` "
                                   "fails until it is (or run it where the key is)")
