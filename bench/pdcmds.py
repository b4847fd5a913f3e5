"""pdstack's remote commands as its components call them, for scripts that run them without Pulumi.

pdstack's rendering layer is under active development; this is the one place that knows how the
components call it (which extra arguments: file ownership records, container slots), so the critical
path and the Ansible playbooks keep running exactly the commands pdstack runs.
"""
from __future__ import annotations

import inspect

from pdstack.rendering import plan as planmod
from pdstack.rendering import remote as cmds

PROJECT_STACK = "pdstack/bench"  # what stack_scoped() would prefix in the benchmark's stack


def _takes(fn, n: int) -> bool:
    return len(inspect.signature(fn).parameters) >= n


def _owner(spec, plan_records: str | None, name: str):
    records = plan_records or (planmod.records_dir(spec) if hasattr(planmod, "records_dir") else None)
    return cmds.FileOwner(records, f"{PROJECT_STACK}/{name}")


def write_files(spec, files, name: str, plan=None) -> str:
    """The stdin of a `-files` / `-global-ranktable` command; `name` is that resource's name."""
    if _takes(cmds.write_files_script, 2):
        return cmds.write_files_script(tuple(files), _owner(spec, getattr(plan, "records", None), name))
    return cmds.write_files_script(tuple(files))


def run_container(plan, image: str) -> str:
    if _takes(cmds.run_container_command, 3):
        return cmds.run_container_command(plan, image, f"{PROJECT_STACK}/{plan.role}")
    return cmds.run_container_command(plan, image)


def pull_image(image: str, host: str) -> str:
    if _takes(cmds.pull_image_command, 2):
        return cmds.pull_image_command(image, host)
    return cmds.pull_image_command(image)


remove_container = cmds.remove_container_command
readiness = cmds.readiness_script
