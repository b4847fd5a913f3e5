"""SSH connection settings of a host, with the private key only ever inside a Pulumi secret."""
from __future__ import annotations

from pathlib import Path

import pulumi
from pulumi_command import remote

from pdstack.config.model import Host


def connection(host: Host) -> remote.ConnectionArgs:
    ssh = host.ssh
    key = ssh.private_key if ssh.private_key is not None else Path(ssh.private_key_path).expanduser().read_text()
    return remote.ConnectionArgs(
        host=host.address,
        port=ssh.port,
        user=ssh.user,
        private_key=pulumi.Output.secret(key),
        host_key=ssh.host_key,
        # A host that is down fails in about a minute rather than after the default ten retries.
        dial_error_limit=4,
        per_dial_timeout=15,
    )
