"""PrefillGroup, DecodeGroup and GlobalProxy: one component per instance, one HostContainer per host."""
from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
from pulumi_command import remote

from pdstack.config.model import Readiness
from pdstack.rendering.model import FileSpec, HostPlan

from .host_container import HostContainer, HostContainerArgs
from .order import after_all


@dataclass
class _GroupArgs:
    plans: tuple[HostPlan, ...]
    image: str
    connections: dict[str, remote.ConnectionArgs]
    ranktables: pulumi.Input[dict[str, tuple[FileSpec, ...]]]  # host name -> its instance ranktables
    global_ranktable: pulumi.Input[FileSpec]
    global_written: dict[str, pulumi.Resource]  # host name -> what wrote the global ranktable there
    readiness: Readiness


@dataclass
class PrefillGroupArgs(_GroupArgs):
    pass


@dataclass
class DecodeGroupArgs(_GroupArgs):
    # When this instance may go down: once the previous one is ready again (components.order.rolling_after),
    # so a change that touches every decode instance never takes them all down at once.
    after: pulumi.Output[str] | None = None


@dataclass
class GlobalProxyArgs:
    plan: HostPlan
    image: str
    connection: remote.ConnectionArgs
    readiness: Readiness
    upstreams: list[remote.Command] = field(default_factory=list)  # readiness of every instance


class _InstanceGroup(pulumi.ComponentResource):
    hosts: dict[str, HostContainer]
    ready: list[remote.Command]

    def __init__(self, type_token: str, name: str, args: _GroupArgs, opts: pulumi.ResourceOptions | None,
                 after: pulumi.Output[str] | None = None):
        super().__init__(type_token, name, None, opts)
        ranktables = pulumi.Output.from_input(args.ranktables)
        self.hosts = {}
        for plan in args.plans:
            self.hosts[plan.host.name] = HostContainer(plan.key, HostContainerArgs(
                plan=plan, image=args.image, connection=args.connections[plan.host.name],
                ranktables=ranktables.apply(
                    lambda rts, p=plan: tuple(f for f in rts[p.host.name] if f.path in p.ranktable_paths)),
                global_ranktable=args.global_ranktable, readiness=args.readiness,
                depends_on=[args.global_written[plan.host.name]], after=after),
                pulumi.ResourceOptions(parent=self))
        self.ready = [hc.ready for hc in self.hosts.values()]
        self.register_outputs({"hosts": list(self.hosts)})


class PrefillGroup(_InstanceGroup):
    def __init__(self, name: str, args: PrefillGroupArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pdstack:index:PrefillGroup", name, args, opts)


class DecodeGroup(_InstanceGroup):
    def __init__(self, name: str, args: DecodeGroupArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pdstack:index:DecodeGroup", name, args, opts, after=args.after)


class GlobalProxy(pulumi.ComponentResource):
    def __init__(self, name: str, args: GlobalProxyArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pdstack:index:GlobalProxy", name, None, opts)
        # The proxy starts only once every prefill and decode host is ready, so it never sends
        # requests to servers that are still loading.
        self.host = HostContainer(args.plan.key, HostContainerArgs(
            plan=args.plan, image=args.image, connection=args.connection, ranktables=(),
            readiness=args.readiness, after=after_all(args.upstreams)), pulumi.ResourceOptions(parent=self))
        self.ready = self.host.ready
        self.register_outputs({"host": args.plan.host.name})
