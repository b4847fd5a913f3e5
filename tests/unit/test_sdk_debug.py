"""The SDK's debug messages are muted, and its registration stack traces cut to the frame that made the
resource, unless PDSTACK_SDK_DEBUG asks for them; nothing else is."""
import pulumi.log
import pytest
from pulumi.runtime import resource as sdk_resource

from components import sdk_debug


@pytest.fixture
def sent(monkeypatch):
    """What reaches the engine, by severity: a stand-in engine behind pulumi.log's own functions."""
    from pulumi.runtime.proto import engine_pb2
    names = {engine_pb2.DEBUG: "debug", engine_pb2.INFO: "info", engine_pb2.WARNING: "warning",
             engine_pb2.ERROR: "error"}
    got = []
    monkeypatch.setattr(pulumi.log, "debug", pulumi.log.debug)  # as it was, after the test
    monkeypatch.setattr(sdk_resource, "_get_stack_trace", sdk_resource._get_stack_trace)
    monkeypatch.setattr(pulumi.log, "get_engine", lambda: object())
    monkeypatch.setattr(pulumi.log, "_log", lambda engine, severity, msg, *rest: got.append((names[severity], msg)))
    return got


def test_muted_by_default(sent, monkeypatch):
    monkeypatch.delenv(sdk_debug.ENV, raising=False)
    assert sdk_debug.mute_unless_asked()
    pulumi.log.debug("registering resource: ty=command:remote:Command")
    pulumi.log.info("shown"), pulumi.log.warn("shown too"), pulumi.log.error("and this")
    assert sent == [("info", "shown"), ("warning", "shown too"), ("error", "and this")]


@pytest.mark.parametrize("value", ["1", "yes"])
def test_kept_when_asked(sent, monkeypatch, value):
    monkeypatch.setenv(sdk_debug.ENV, value)
    assert not sdk_debug.mute_unless_asked()
    pulumi.log.debug("registering resource")
    assert sent == [("debug", "registering resource")]


# The shape the SDK expects above _get_stack_trace: Resource.__init__ <- CustomResource.__init__ <-
# the concrete resource's __init__ <- the code that made it.
class _Base:
    def __init__(self):
        self.trace = sdk_resource._get_stack_trace()


class _Custom(_Base):
    def __init__(self):
        super().__init__()


class _Concrete(_Custom):
    def __init__(self):
        super().__init__()


def _made_here():
    return _Concrete().trace, _made_here.__code__.co_firstlineno + 1


def test_stack_traces_keep_the_frame_that_made_the_resource(sent, monkeypatch):
    monkeypatch.setenv(sdk_debug.ENV, "1")
    sdk_debug.mute_unless_asked()
    full, line = _made_here()
    assert len(full.frames) > 2  # pytest's own frames, at least
    monkeypatch.delenv(sdk_debug.ENV)
    sdk_debug.mute_unless_asked()
    trimmed, _ = _made_here()
    assert len(trimmed.frames) == 1
    assert trimmed.frames[0].pc.uri.endswith("/tests/unit/test_sdk_debug.py") and trimmed.frames[0].pc.line == line
    assert trimmed.frames[0] == full.frames[0]
    assert sdk_resource._get_source_position(trimmed) == sdk_resource._get_source_position(full)
