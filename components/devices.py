"""Per prefill/decode host: read its NPU device addresses (hccn_tool), and write the global ranktable
that every instance's ranktables are merged into (one file per host, shared by its containers)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from pdstack.config.model import Host
from pdstack.rendering import ranktable
from pdstack.rendering import remote as cmds
from pdstack.rendering.model import FileSpec

from .host_container import stack_scoped


@dataclass
class DeviceAddressesArgs:
    hosts: dict[str, tuple[Host, tuple[int, ...]]]  # host name -> (host, devices to read)
    connections: dict[str, remote.ConnectionArgs]


class DeviceAddresses(pulumi.ComponentResource):
    addresses: pulumi.Output[dict]  # host name -> {device id: address}

    def __init__(self, name: str, args: DeviceAddressesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pdstack:index:DeviceAddresses", name, None, opts)
        outputs = {}
        for host_name, (host, devices) in sorted(args.hosts.items()):
            # Named after the machine, not the host's name in the config: what is read is a fact about
            # the machine, and renaming a host must not read it again (the read's output would be
            # unknown in the preview, and so would every ranktable, and every container would show as
            # a possible replacement).
            read = remote.Command(
                f"{host.address}-device-addresses", connection=args.connections[host_name],
                create=ranktable.read_devices_command(devices),
                # Read once per host and device list; a new address or device list reads again.
                triggers=[f"host={host.address}", "devices=" + ",".join(map(str, devices))],
                add_previous_output_in_env=False, logging="stderr",
                opts=pulumi.ResourceOptions(parent=self))
            outputs[host_name] = read.stdout.apply(
                lambda out, h=host_name, d=devices: {str(k): v for k, v in ranktable.parse_device_addresses(h, d, out).items()})
        found = pulumi.Output.all(**outputs) if outputs else pulumi.Output.from_input({})
        self.addresses = unrecorded(found)
        self.register_outputs({"addresses": found})


def unrecorded(output: pulumi.Output) -> pulumi.Output:
    """`output`'s value, known-ness and secrecy, without the resources it came from.

    Every host's ranktables need every host's device addresses, so an input built from them would
    record every read as a dependency: three resources per host listing every host's read, twice each
    (N² URNs in the state, which the engine rewrites after every step). The order needs no record:
    a resource built from the addresses is registered only once they are read. Deletes need none
    either: a read deletes nothing on its host.
    """
    loop = asyncio.get_event_loop()
    known, secret = loop.create_future(), loop.create_future()

    def split(flags: asyncio.Future) -> None:
        # A failed read fails the value itself; the flags are then never asked for.
        ok = flags.exception() is None
        known.set_result(ok and flags.result()[0])
        secret.set_result(ok and flags.result()[1])

    asyncio.ensure_future(asyncio.gather(output.is_known(), output.is_secret())).add_done_callback(split)
    return pulumi.Output(set(), output.future(), known, secret)


@dataclass
class GlobalRanktableArgs:
    hosts: dict[str, Host]  # every prefill/decode host
    connections: dict[str, remote.ConnectionArgs]
    path: str  # known before the device addresses, so deletes never wait on them
    records: str  # where hosts record who wrote the file (see FileOwner)
    file: pulumi.Input[FileSpec]


class GlobalRanktable(pulumi.ComponentResource):
    written: dict[str, remote.Command]  # host name -> the command that wrote it there

    def __init__(self, name: str, args: GlobalRanktableArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pdstack:index:GlobalRanktable", name, None, opts)
        file = pulumi.Output.from_input(args.file)
        self.written = {}
        for host_name, host in sorted(args.hosts.items()):
            # Written and removed per host, not per container: a host serving prefill and decode must
            # keep it while either of its containers remains.
            owner = cmds.FileOwner(args.records, stack_scoped(f"{host_name}-global-ranktable"))
            self.written[host_name] = remote.Command(
                f"{host_name}-global-ranktable", connection=args.connections[host_name],
                create="bash -s", stdin=file.apply(lambda f, o=owner: cmds.write_files_script((f,), o)),
                delete=cmds.delete_files_command((args.path,), owner),
                triggers=[f"host={host.address}"], add_previous_output_in_env=False, logging="stderr",
                # Same path on the same host when replaced with --replace: delete first, as for -files.
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True))
        self.register_outputs({"hosts": sorted(self.written)})
