"""The Pulumi SDK's debug messages: muted unless asked for.

The Python SDK sends about five debug messages per resource to the engine ("registering resource",
"RegisterResource RPC prepared", ...), each a blocking RPC on the program's event loop, and the CLI
discards them unless it runs with --debug. At 33 hosts (243 resources) they were 1.5 s of a 6 s no-op
`pulumi preview`, in the program and the engine both. The program cannot see the CLI's --debug flag,
so the switch is an environment variable: PDSTACK_SDK_DEBUG=1 keeps them.
"""
from __future__ import annotations

import os

import pulumi.log

ENV = "PDSTACK_SDK_DEBUG"
_SDK_DEBUG = pulumi.log.debug


def mute_unless_asked() -> bool:
    """Mutes pulumi.log.debug (the SDK looks it up at each call) unless PDSTACK_SDK_DEBUG is set;
    True when muted. Warnings, errors and info messages are untouched."""
    asked = os.environ.get(ENV, "") not in ("", "0")
    pulumi.log.debug = _SDK_DEBUG if asked else _discard
    return not asked


def _discard(*_args, **_kwargs) -> None:
    return None
