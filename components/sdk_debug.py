"""The Pulumi SDK's debugging aids: left out unless asked for.

- Debug messages. The Python SDK sends about five per resource to the engine ("registering resource",
  "RegisterResource RPC prepared", ...), each a blocking RPC on the program's event loop, and the CLI
  discards them unless it runs with --debug. At 33 hosts (243 resources) they were 1.5 s of a 6 s
  no-op `pulumi preview`, in the program and the engine both.
- Registration stack traces. With every resource the SDK sends the whole Python stack above the
  resource's constructor (about 16 frames, through asyncio and the SDK's own runtime), and the engine
  keeps it in the stack's state. A DIY backend rewrites the whole state after every step, and those
  writes are most of the engine's CPU in a large `up`: the traces were 16 % of each write (1.3 KB a
  resource). The first frame, where pdstack made the resource (the engine's `sourcePosition`), stays.

The program cannot see the CLI's --debug flag, so the switch is an environment variable:
PDSTACK_SDK_DEBUG=1 keeps both.
"""
from __future__ import annotations

import os

import pulumi.log
from pulumi.runtime import resource as _resource

ENV = "PDSTACK_SDK_DEBUG"
_SDK_DEBUG = pulumi.log.debug
_SDK_STACK_TRACE = _resource._get_stack_trace  # pinned SDK (requirements.txt); tests/unit/test_sdk_debug.py


def mute_unless_asked() -> bool:
    """Unless PDSTACK_SDK_DEBUG is set, mutes pulumi.log.debug and trims registration stack traces to
    their first frame (the SDK looks both up at each call); True when it did. Warnings, errors and info
    messages are untouched."""
    asked = os.environ.get(ENV, "") not in ("", "0")
    pulumi.log.debug = _SDK_DEBUG if asked else _discard
    _resource._get_stack_trace = _SDK_STACK_TRACE if asked else _first_frame
    return not asked


def _discard(*_args, **_kwargs) -> None:
    return None


def _first_frame():
    trace = _SDK_STACK_TRACE()
    del trace.frames[1:]
    return trace
