"""Reads each prefill/decode host's NPU device addresses (hccn_tool), which the ranktables need."""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from pdstack.config.model import Host
from pdstack.rendering import ranktable


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
            read = remote.Command(
                f"{host_name}-device-addresses", connection=args.connections[host_name],
                create=ranktable.read_devices_command(devices),
                # Read once per host and device list; a new address or device list reads again.
                triggers=[f"host={host.address}", "devices=" + ",".join(map(str, devices))],
                add_previous_output_in_env=False, logging="stderr",
                opts=pulumi.ResourceOptions(parent=self))
            outputs[host_name] = read.stdout.apply(
                lambda out, h=host_name, d=devices: {str(k): v for k, v in ranktable.parse_device_addresses(h, d, out).items()})
        self.addresses = pulumi.Output.all(**outputs) if outputs else pulumi.Output.from_input({})
        self.register_outputs({"addresses": self.addresses})
