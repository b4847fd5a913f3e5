"""The per-host building block: files, image, container and readiness of one container on one host."""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from pdstack.config.model import Readiness
from pdstack.rendering import remote as cmds
from pdstack.rendering.model import FileSpec, HostPlan, digest


@dataclass
class HostContainerArgs:
    plan: HostPlan
    image: str  # what `docker run` gets: a digest-pinned reference when the registry could be asked
    connection: remote.ConnectionArgs
    ranktables: pulumi.Input[tuple[FileSpec, ...]]  # this container's instance ranktables (need device addresses)
    readiness: Readiness
    global_ranktable: pulumi.Input[FileSpec] | None = None  # read too; written per host by GlobalRanktable
    depends_on: list[pulumi.Resource] | None = None  # on this host: what the container needs while it exists
    after: pulumi.Output[str] | None = None  # on other hosts: start only once this resolves (see components.order)


def stack_scoped(name: str) -> str:
    """`name` made unique among every stack that may share these hosts."""
    return f"{pulumi.get_project()}/{pulumi.get_stack()}/{name}"


def triggers(plan: HostPlan, image: str, ranktables_digest: pulumi.Input[str]) -> list:
    """Everything the container depends on, one named entry per part, so a preview diff says why."""
    return ([f"host={plan.host.address}", f"image={image}"] + [f"{k}={v}" for k, v in plan.parts]
            + [pulumi.Output.concat("ranktables=", ranktables_digest)])


class HostContainer(pulumi.ComponentResource):
    container: remote.Command
    ready: remote.Command

    def __init__(self, name: str, args: HostContainerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pdstack:index:HostContainer", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        # The host's address is in every trigger: moving a role to another host must run `delete` on
        # the old host and `create` on the new one, which an in-place update would not.
        on_host = [f"host={plan.host.address}"]

        files = pulumi.Output.from_input(args.ranktables).apply(lambda rts: plan.files + tuple(rts))
        owner = cmds.FileOwner(plan.records, stack_scoped(f"{name}-files"))
        written = remote.Command(
            f"{name}-files", connection=args.connection,
            create="bash -s", stdin=files.apply(lambda fs: cmds.write_files_script(fs, owner)),
            delete=cmds.delete_files_command(tuple(f.path for f in plan.files) + plan.ranktable_paths, owner),
            triggers=on_host, add_previous_output_in_env=False, logging="stderr",
            # Delete before replace: the old and the new resource write the same paths on the same host
            # (`pulumi up --replace`, as `pdstack status` prints for a changed launch script), and a
            # create-before-delete replacement would delete the files the new one has just written.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True))

        image = remote.Command(
            f"{name}-image", connection=args.connection,
            create=cmds.pull_image_command(args.image, plan.host.name),
            triggers=on_host + [f"image={args.image}"], add_previous_output_in_env=False, opts=child)

        read = pulumi.Output.all(args.ranktables, args.global_ranktable).apply(
            lambda parts: tuple(parts[0]) + ((parts[1],) if parts[1] else ()))
        rt_digest = read.apply(lambda rts: digest("".join(f.path + f.content for f in rts)))
        run = cmds.run_container_command(plan, args.image, stack_scoped(plan.role))
        self.container = remote.Command(
            f"{name}-container", connection=args.connection,
            create=args.after.apply(lambda _: run) if args.after is not None else run,
            # Only a change of `triggers` may restart the container; anything else (a rotated SSH key,
            # say) updates in place, and the update must not touch it.
            update=cmds.container_id_command(plan),
            delete=cmds.remove_container_command(plan),
            triggers=triggers(plan, args.image, rt_digest), add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True,
                                        depends_on=[written, image] + list(args.depends_on or [])))

        self.ready = remote.Command(
            f"{name}-ready", connection=args.connection,
            create=cmds.readiness_script(plan, args.readiness.timeout_seconds, args.readiness.interval_seconds),
            triggers=[self.container.stdout], add_previous_output_in_env=False, logging="stderr",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.container]))

        self.container_name = plan.container.name
        self.register_outputs({"containerId": self.container.stdout, "containerName": plan.container.name})
