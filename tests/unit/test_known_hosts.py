"""Host key pins from a known_hosts file: plain, hashed and [host]:port entries; missing hosts are errors."""
import base64
import copy
import hashlib
import hmac

import pytest

from pdstack.config.known_hosts import lookup, parse_known_hosts, pin_host_keys
from pdstack.config.parse import ConfigError, parse_cluster

ED_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
ED_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDNlQl3sPfAP3T44lHTDLNMnD7ClOH8cpfEWn7C0kYi1"
RSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7"


def hashed(name: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def test_lookup_plain_hashed_and_port_entries():
    entries = parse_known_hosts("\n".join([
        "# comment", "", f"10.0.0.1,p0 {ED_A}", f"{hashed('10.0.0.2')} {ED_B} a comment",
        f"[10.0.0.3]:2222 {ED_A}", f"@revoked 10.0.0.4 {ED_B}", f"10.0.0.5 {RSA}", f"10.0.0.5 {ED_B}"]))
    assert lookup(entries, "10.0.0.1", 22) == ED_A
    assert lookup(entries, "10.0.0.2", 22) == ED_B
    assert lookup(entries, "10.0.0.3", 2222) == ED_A
    assert lookup(entries, "10.0.0.3", 22) is None  # a pin for another port is not this one
    assert lookup(entries, "10.0.0.4", 22) is None  # revoked, not a pin
    assert lookup(entries, "10.0.0.5", 22) == ED_B  # ed25519 preferred over rsa
    assert lookup(entries, "10.0.0.9", 22) is None


def config(known_hosts: str, **host_overrides) -> dict:
    hosts = {"p0": {"address": "10.0.0.1"}, "d0": {"address": "10.0.0.2"}}
    for name, extra in host_overrides.items():
        hosts[name].update(extra)
    return {
        "pdstack:image": "quay.io/ascend/vllm-ascend:v0.9.0-dsv3.2",
        "pdstack:ssh": {"privateKeyPath": "/k", "knownHostsFile": known_hosts},
        "pdstack:hosts": hosts,
        "pdstack:prefill": [{"name": "prefill-0", "hosts": ["p0"], "devices": "0-15"}],
        "pdstack:decode": [{"name": "decode-0", "hosts": ["d0"], "devices": "0-15"}],
        "pdstack:proxy": {"host": "p0"},
    }


def test_every_host_is_pinned_from_the_file_unless_it_sets_host_key(tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(f"10.0.0.1 {ED_A}\n10.0.0.2 {ED_A}\n")
    spec = pin_host_keys(parse_cluster(config(str(known), d0={"hostKey": ED_B})))
    assert spec.host("p0").ssh.host_key == ED_A
    assert spec.host("d0").ssh.host_key == ED_B  # its own hostKey wins


def test_a_host_missing_from_the_file_is_an_error_naming_it_and_the_fix(tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(f"10.0.0.1 {ED_A}\n")
    with pytest.raises(ConfigError) as err:
        pin_host_keys(parse_cluster(config(str(known))))
    assert str(err.value).startswith("pdstack:ssh.knownHostsFile:")
    assert '"d0" (10.0.0.2)' in str(err.value) and "ssh-keyscan -p 22 10.0.0.2" in str(err.value)


def test_an_unreadable_file_is_an_error(tmp_path):
    raw = config(str(tmp_path / "missing"))
    raw["pdstack:hosts"]["d0"]["knownHostsFile"] = str(tmp_path / "also-missing")
    with pytest.raises(ConfigError) as err:
        pin_host_keys(parse_cluster(raw))
    paths = [issue.path for issue in err.value.issues]
    assert paths == ["pdstack:hosts.d0.knownHostsFile", "pdstack:ssh.knownHostsFile"]
    assert "cannot be read" in str(err.value)


def test_without_a_file_nothing_changes():
    raw = config("/unused")
    del raw["pdstack:ssh"]["knownHostsFile"]
    spec = parse_cluster(raw)
    assert pin_host_keys(spec) == spec
