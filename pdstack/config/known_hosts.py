"""Host key pins from an OpenSSH known_hosts file (`pdstack:ssh.knownHostsFile` or per host).

A host's own `hostKey` wins; otherwise its key comes from the file, looked up the way `ssh` does:
by address (`[address]:port` when the port is not 22), in plain or hashed (`|1|salt|hash`) entries.
A configured file that lacks a host is an error before anything remote happens, not a silent
unpinned connection.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import replace

from .errors import ConfigError, ConfigIssue
from .model import ClusterSpec, Host
from .reader import child, show

NAMESPACE = "pdstack:"
# Preferred when a host lists several keys: the provider pins one key.
_PREFERENCE = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


def parse_known_hosts(text: str) -> list[tuple[list[str], str]]:
    """(host patterns, "<type> <base64>") per usable line; marker lines (@revoked, @cert-authority) skipped."""
    entries = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#") or words[0].startswith("@") or len(words) < 3:
            continue
        entries.append((words[0].split(","), f"{words[1]} {words[2]}"))
    return entries


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            _, _, salt, digest = pattern.split("|")
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(mac, base64.b64decode(digest))
        except (ValueError, TypeError):
            return False
    return pattern == name


def lookup(entries: list[tuple[list[str], str]], address: str, port: int) -> str | None:
    name = address if port == 22 else f"[{address}]:{port}"
    found = [key for patterns, key in entries if any(_matches(p, name) for p in patterns)]
    if not found:
        return None
    return min(found, key=lambda k: _PREFERENCE.index(k.split()[0]) if k.split()[0] in _PREFERENCE else 99)


def pin_host_keys(spec: ClusterSpec) -> ClusterSpec:
    """The spec with every host's key taken from its known_hosts file where it sets no hostKey."""
    issues, hosts, loaded = [], [], {}
    for host in spec.hosts:
        path = host.ssh.known_hosts_file
        if path is None or host.ssh.host_key is not None:
            hosts.append(host)
            continue
        where = _where(spec, host)
        if path not in loaded:
            loaded[path] = _read(path)
        entries = loaded[path]
        if isinstance(entries, str):
            issues.append(ConfigIssue(where, entries))
            hosts.append(host)
            continue
        key = lookup(entries, host.address, host.ssh.port)
        if key is None:
            issues.append(ConfigIssue(where, f"{show(path)} has no key for host {show(host.name)} "
                                             f"({host.address}); add it with `ssh-keyscan -p {host.ssh.port} "
                                             f"{host.address} >> {path}` after checking it, or set hostKey"))
            hosts.append(host)
            continue
        hosts.append(Host(host.name, host.address, replace(host.ssh, host_key=key)))
    if issues:
        raise ConfigError(sorted(set(issues), key=lambda i: i.path))
    return replace(spec, hosts=tuple(hosts))


def _where(spec: ClusterSpec, host: Host) -> str:
    if spec.ssh.known_hosts_file == host.ssh.known_hosts_file:
        return f"{NAMESPACE}ssh.knownHostsFile"
    return child(f"{NAMESPACE}hosts", host.name) + ".knownHostsFile"


def _read(path: str) -> list[tuple[list[str], str]] | str:
    """The entries, or why the file cannot be used."""
    full = os.path.expanduser(path)
    try:
        with open(full) as f:
            return parse_known_hosts(f.read())
    except OSError as err:
        return f"{show(path)} cannot be read ({err.strerror}); point knownHostsFile at a known_hosts file"
