"""pdstack's remote commands as its components call them, for scripts that run them without Pulumi.

The one place that knows which extra arguments the components pass (file ownership records, container
slots, as the benchmark's stack would scope them), so the critical path and the Ansible playbooks run
exactly the commands pdstack runs.
"""
from __future__ import annotations

from pdstack.rendering import plan as planmod
from pdstack.rendering import remote as cmds

PROJECT_STACK = "pdstack/bench"  # what components.host_container.stack_scoped() prefixes in the bench stack


def write_files(spec, files, name: str, plan=None) -> str:
    """The stdin of a `-files` / `-global-ranktable` command; `name` is that resource's name."""
    records = plan.records if plan is not None else planmod.records_dir(spec)
    return cmds.write_files_script(tuple(files), cmds.FileOwner(records, f"{PROJECT_STACK}/{name}"))


def run_container(plan, image: str) -> str:
    return cmds.run_container_command(plan, image, f"{PROJECT_STACK}/{plan.role}")


pull_image = cmds.pull_image_command
remove_container = cmds.remove_container_command
readiness = cmds.readiness_script
