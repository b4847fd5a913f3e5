"""The SDK's debug messages are muted unless PDSTACK_SDK_DEBUG asks for them; nothing else is."""
import pulumi.log
import pytest

from components import sdk_debug


@pytest.fixture
def sent(monkeypatch):
    """What reaches the engine, by severity: a stand-in engine behind pulumi.log's own functions."""
    from pulumi.runtime.proto import engine_pb2
    names = {engine_pb2.DEBUG: "debug", engine_pb2.INFO: "info", engine_pb2.WARNING: "warning",
             engine_pb2.ERROR: "error"}
    got = []
    monkeypatch.setattr(pulumi.log, "debug", pulumi.log.debug)  # as it was, after the test
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
