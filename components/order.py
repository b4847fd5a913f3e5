"""Start order across hosts: kept by the program, and nowhere in the state.

Containers start in an order across hosts: the proxy once every engine is ready, and decode instances
that were serving, one at a time (a rolling update). The container registers only once what it waits
for is done. A dependency recorded in the state would also order deletes: `pulumi destroy` with one
host unreachable would then keep, running, every container that host's container waited for (with the
proxy's host down: all of them). Deletes need no order, so the order lives here.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pulumi
from pulumi_command import remote

if TYPE_CHECKING:
    from .host_container import HostContainer

# Stack outputs the next `up` reads back (see PreviousDeployment); __main__ exports them under these keys.
DECODE_ENDPOINTS = "decodeEndpoints"  # decode instance name -> its API endpoints
CONTAINER_IDS = "containerIds"  # container name -> the id of the container `up` left running
READ_STACK_OUTPUTS = "pulumi:pulumi:readStackOutputs"  # the engine's builtin behind StackReference


def after_all(commands: list[remote.Command]) -> pulumi.Output[str]:
    """An empty string once every one of `commands` is done, with no dependency on them in the state."""
    async def done() -> str:
        for command in commands:
            await command.stdout.future()
        return ""
    return pulumi.Output.from_input(done())


class PreviousDeployment:
    """What this stack's last `pulumi up` exported: which decode instances were serving, and which
    containers were running. A stack never deployed (or deployed by a pdstack that did not export a
    key) reads as empty for that key.

    Read once, blocking, when the program starts. The engine rewrites the stack's checkpoint after
    every step, and a file backend's reader can catch it half-written ("failed to load checkpoint:
    EOF", seen with a StackReference): read after the stack resource is registered and before any
    other resource, no write is under way. An invoke, too, leaves nothing in the state.
    """

    def __init__(self) -> None:
        # On DIY (file, S3) backends the organization is the literal "organization"; get_organization()
        # returns it there, and the real one on Pulumi Cloud.
        name = f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}"
        # `after`, ignored by the engine, makes the SDK wait for the stack's registration to finish.
        result = pulumi.runtime.invoke(READ_STACK_OUTPUTS,
                                       {"name": name, "after": pulumi.runtime.get_root_resource().urn})
        outputs = (result.value or {}).get("outputs") or {}
        self.decode_instances: set[str] = set(outputs.get(DECODE_ENDPOINTS) or {})
        self.container_ids: dict[str, str] = dict(outputs.get(CONTAINER_IDS) or {})


def rolling_after(previous: PreviousDeployment, instance: str, before: list[HostContainer],
                  settle_seconds: float) -> pulumi.Output[str]:
    """An empty string once decode `instance` may be (re)started, given `before`, the previous
    instance's hosts.

    An instance that was serving goes down only once the previous instance is ready again, so the
    proxy always has a decode instance to send requests to. If the previous instance was restarted by
    this `up`, the proxy took it out of rotation while it was down and takes it back only after its
    fail_timeout: wait `settle_seconds` more. An instance that was not serving (a first deploy, a new
    instance) takes nothing down, so it starts at once.
    """
    async def gate() -> str:
        if pulumi.runtime.is_dry_run() or instance not in previous.decode_instances:
            return ""
        restarted = False
        for hc in before:
            await hc.ready.stdout.future()
            restarted |= previous.container_ids.get(hc.container_name) != await hc.container.stdout.future()
        if restarted:
            await asyncio.sleep(settle_seconds)
        return ""
    return pulumi.Output.from_input(gate())
