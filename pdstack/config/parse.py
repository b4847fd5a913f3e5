"""Parse and validate a stack's `pdstack:*` config into a ClusterSpec.

`parse_cluster` is pure: for any input it returns a ClusterSpec or raises ConfigError listing every
issue found. It reads each block on its own, then checks the references between blocks (skipping
values already reported as invalid, so one mistake gives one issue), and only when all of that is
clean builds the spec and checks what its derived ports show.
"""
from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .. import profile, topology
from . import checks
from .devices import HINT as DEVICES_HINT
from .devices import format_devices, parse_devices
from .errors import ConfigError, ConfigIssue, InvalidValue
from .image_ref import EXAMPLE as IMAGE_EXAMPLE
from .image_ref import check_image_ref
from .model import (
    ClusterSpec, ContainerNames, DecodeInstance, EngineSettings, Host, Model, Paths, Ports, PrefillInstance,
    Proxy, Readiness, SshSettings,
)
from .reader import Reader, child, closest, item, kind, show, unknown_key_message

__all__ = ["ConfigError", "ConfigIssue", "check_local_files", "parse_cluster"]

NAMESPACE = "pdstack:"
_LIST, _MAP, _STRING = "list", "map", "string"
TOP_LEVEL = {
    "image": _STRING, "ssh": _MAP, "model": _MAP, "paths": _MAP, "containers": _MAP, "hosts": _MAP,
    "prefill": _LIST, "decode": _LIST, "proxy": _MAP, "ports": _MAP, "readiness": _MAP,
}
_REQUIRED = {
    "image": f"is required: the image every container runs, e.g. {IMAGE_EXAMPLE}",
    "hosts": "is required: a map of host name to settings, e.g. {p0: {address: 10.0.0.1}}",
    "prefill": 'is required: a list of prefill instances, e.g. [{name: prefill-0, hosts: [p0], devices: "0-15"}]',
    "decode": 'is required: a list of decode instances, e.g. [{name: decode-0, hosts: [d0], devices: "0-15"}]',
    "proxy": "is required: where the global proxy runs, e.g. {host: p0}",
}

SSH_KEYS = ("user", "port", "privateKeyPath", "privateKey", "hostKey", "knownHostsFile")
HOST_KEYS = ("address", *SSH_KEYS)
ENGINE_KEYS = ("maxModelLen", "maxNumSeqs", "gpuMemoryUtilization", "extraArgs", "env")
PREFILL_KEYS = ("name", "hosts", "devices", "engine")
DECODE_KEYS = ("name", "hosts", "devices", "tensorParallel", "engine")
PROXY_KEYS = ("host", "port", "prefillPolicy", "decodePolicy", "prefillMaxNumSeqs", "decodeMaxNumSeqs")
PORT_MIN, PORT_MAX, PROXY_PORT_MAX = 1024, 65535, 65500  # global_proxy.sh refuses proxy ports above 65500

# The reference playbook's values (omni_ansible_spec.md §3.2 and pd_run.sh).
PREFILL_ENGINE = EngineSettings(max_model_len=66560, max_num_seqs=16, gpu_memory_utilization=0.92)
DECODE_ENGINE = EngineSettings(max_model_len=66560, max_num_seqs=4, gpu_memory_utilization=0.95)

_SSH_DEFAULTS = SshSettings()


# ---------------------------------------------------------------------------------------------------
# Public API


def parse_cluster(raw: Mapping[str, Any]) -> ClusterSpec:
    """The ClusterSpec a stack's config means; raises ConfigError with every issue if it is invalid."""
    r = Reader()
    drafts = _read_blocks(raw, r)
    _check_references(drafts, r)
    if r.issues:
        raise ConfigError(r.issues)
    spec = _build(drafts)
    _check_ports(spec, r)
    if r.issues:
        raise ConfigError(r.issues)
    return spec


def check_local_files(spec: ClusterSpec) -> None:
    """Raises ConfigError when a private key file the deployment would read is missing or unreadable."""
    issues = []
    used = {h.ssh.private_key_path for h in spec.hosts if h.ssh.private_key_path is not None}
    if spec.ssh.private_key_path in used:
        problem = _key_file_problem(spec.ssh.private_key_path)
        if problem:
            issues.append(ConfigIssue(f"{NAMESPACE}ssh.privateKeyPath", problem))
    for host in spec.hosts:
        path = host.ssh.private_key_path
        if path is None or path == spec.ssh.private_key_path:
            continue
        problem = _key_file_problem(path)
        if problem:
            issues.append(ConfigIssue(child(f"{NAMESPACE}hosts", host.name) + ".privateKeyPath", problem))
    if issues:
        raise ConfigError(issues)


def _key_file_problem(path: str) -> str | None:
    full = os.path.expanduser(path)
    shown = show(path) if full == path else f"{show(path)} ({show(full)})"
    if not os.path.exists(full):
        return f"{shown} does not exist on this machine; point privateKeyPath at an existing key file"
    if not os.path.isfile(full):
        return f"{shown} is not a file; point privateKeyPath at a key file"
    try:
        with open(full, "rb") as f:
            f.read(1)
    except OSError as err:
        return f"{shown} cannot be read ({err.strerror}); fix its permissions or use another key file"
    return None


# ---------------------------------------------------------------------------------------------------
# Pass 1: each block on its own


@dataclass(frozen=True)
class _SshLayer:
    """The SSH settings one level (stack-wide or one host) sets; None = not set there."""
    user: str | None = None
    port: int | None = None
    key_path: str | None = None
    key: str | None = None
    host_key: str | None = None
    known_hosts: str | None = None
    has_key: bool = False  # a key is configured at this level, even if invalid (already reported)


@dataclass(frozen=True)
class _HostDraft:
    name: str
    path: str
    address: str | None
    ssh: _SshLayer | None  # None when the host's settings are not a map


@dataclass(frozen=True)
class _InstanceDraft:
    role: str  # "prefill" or "decode"
    path: str  # e.g. "pdstack:prefill[0]"
    name: str | None
    hosts: tuple[str, ...] | None
    devices: tuple[int, ...] | None
    tensor_parallel: int
    engine: EngineSettings


@dataclass(frozen=True)
class _Drafts:
    image: str
    ssh: _SshLayer | None
    model: Model
    paths: Paths
    containers: ContainerNames
    hosts: dict[str, _HostDraft]
    prefill: list[_InstanceDraft]
    decode: list[_InstanceDraft]
    proxy: Proxy
    ports: Ports
    readiness: Readiness


def _read_blocks(raw: Mapping[str, Any], r: Reader) -> _Drafts:
    cfg, broken = _top_level(raw, r)
    ssh = _ssh_layer(cfg["ssh"], f"{NAMESPACE}ssh", r) if "ssh" in cfg else _SshLayer()
    return _Drafts(
        image=_image(cfg, r),
        ssh=None if "ssh" in broken else ssh,
        model=_model(cfg, r),
        paths=_paths(cfg, r),
        containers=_containers(cfg, r),
        hosts=_hosts(cfg, r),
        prefill=_instances(cfg, "prefill", r),
        decode=_instances(cfg, "decode", r),
        proxy=_proxy(cfg, r),
        ports=_ports(cfg, r),
        readiness=_readiness(cfg, r),
    )


def _top_level(raw: Any, r: Reader) -> tuple[dict[str, Any], set[str]]:
    """The `pdstack:` keys without their namespace, JSON strings decoded, and the keys whose JSON is broken.

    Keys of other namespaces (aws:region, …) belong to other programs' providers and are left alone."""
    cfg: dict[str, Any] = {}
    broken: set[str] = set()
    if not isinstance(raw, Mapping):
        r.error(NAMESPACE.rstrip(":"), f"expected the stack config as a map of keys to values; got {kind(raw)}")
        return cfg, broken
    for key, value in raw.items():
        if not isinstance(key, str) or not key.startswith(NAMESPACE):
            continue
        name = key[len(NAMESPACE):]
        if name not in TOP_LEVEL:
            r.error(key, unknown_key_message(key, [NAMESPACE + k for k in TOP_LEVEL]))
            continue
        if TOP_LEVEL[name] != _STRING and isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError) as err:
                # The text is not echoed: it may hold a secret such as ssh.privateKey.
                why = f"{err.msg} at character {err.pos}" if isinstance(err, json.JSONDecodeError) else "too deep"
                r.error(key, f"expected a {TOP_LEVEL[name]} (Pulumi passes it as JSON), "
                             f"but the text is not JSON: {why}")
                broken.add(name)
                continue
        cfg[name] = value
    for name, message in _REQUIRED.items():
        if name not in cfg and name not in broken:
            r.error(NAMESPACE + name, message)
    return cfg, broken


def _image(cfg: dict[str, Any], r: Reader) -> str:
    if "image" not in cfg:
        return ""
    path, value = f"{NAMESPACE}image", cfg["image"]
    if not isinstance(value, str):
        r.error(path, f"expected an image reference like {IMAGE_EXAMPLE}; got {kind(value)}")
        return ""
    try:
        check_image_ref(value)
    except InvalidValue as bad:
        r.error(path, str(bad))
        return ""
    return value


def _ssh_layer(value: Any, path: str, r: Reader, *, of_host: bool = False) -> _SshLayer | None:
    """`pdstack:ssh`, or a host's entry, which adds its address to the same settings."""
    if of_host:
        block = r.block(value, path, HOST_KEYS, required={"address": "10.0.0.1 or node1.example.com"})
    else:
        block = r.block(value, path, SSH_KEYS)
    if block is None:
        return None
    host_key = r.string(block, "hostKey", path, default=None, check=checks.host_key)
    layer = _SshLayer(
        user=r.string(block, "user", path, default=None, check=checks.ssh_user),
        port=r.integer(block, "port", path, default=None, lo=1, hi=65535),
        key_path=r.string(block, "privateKeyPath", path, default=None, check=checks.key_path),
        key=r.string(block, "privateKey", path, default=None, check=checks.private_key),
        host_key=None if host_key is None else checks.normalised_host_key(host_key),
        known_hosts=r.string(block, "knownHostsFile", path, default=None, check=checks.key_path),
        has_key="privateKeyPath" in block or "privateKey" in block,
    )
    if "privateKeyPath" in block and "privateKey" in block:
        r.error(path, "sets both privateKeyPath and privateKey; keep one (a key file on this machine, "
                      "or the key as a secret)")
    return layer


def _model(cfg: dict[str, Any], r: Reader) -> Model:
    path = f"{NAMESPACE}model"
    if "model" not in cfg:
        return Model()
    block = r.block(cfg["model"], path, ("path", "servedName"))
    d = Model()
    return Model(
        path=r.string(block, "path", path, default=d.path, check=checks.absolute_path),
        served_name=r.string(block, "servedName", path, default=d.served_name, check=checks.served_name),
    )


def _paths(cfg: dict[str, Any], r: Reader) -> Paths:
    path = f"{NAMESPACE}paths"
    if "paths" not in cfg:
        return Paths()
    block = r.block(cfg["paths"], path, ("logs", "scripts", "ranktables"))
    d = Paths()
    return Paths(
        logs=r.string(block, "logs", path, default=d.logs, check=checks.absolute_path),
        scripts=r.string(block, "scripts", path, default=d.scripts, check=checks.absolute_path),
        ranktables=r.string(block, "ranktables", path, default=d.ranktables, check=checks.absolute_path),
    )


def _containers(cfg: dict[str, Any], r: Reader) -> ContainerNames:
    path = f"{NAMESPACE}containers"
    if "containers" not in cfg:
        return ContainerNames()
    block = r.block(cfg["containers"], path, ("prefill", "decode", "proxy"))
    d = ContainerNames()
    names = ContainerNames(
        prefill=r.string(block, "prefill", path, default=d.prefill, check=checks.container_prefix),
        decode=r.string(block, "decode", path, default=d.decode, check=checks.container_prefix),
        proxy=r.string(block, "proxy", path, default=d.proxy, check=checks.container_prefix),
    )
    # One host may run several roles, each as `<prefix>_<host>`: equal prefixes would collide.
    seen: dict[str, str] = {}
    for role in ("prefill", "decode", "proxy"):
        prefix = getattr(names, role)
        if prefix in seen:
            r.error(child(path, role), f"{show(prefix)} is also the {seen[prefix]} prefix; each role needs its own "
                                       "prefix because a host may run several roles")
        seen.setdefault(prefix, role)
    return names


def _hosts(cfg: dict[str, Any], r: Reader) -> dict[str, _HostDraft]:
    path = f"{NAMESPACE}hosts"
    if "hosts" not in cfg:
        return {}
    value = cfg["hosts"]
    if not isinstance(value, Mapping):
        r.error(path, "expected a map of host name to settings, e.g. {p0: {address: 10.0.0.1}}; "
                      f"got {kind(value)}")
        return {}
    if not value:
        r.error(path, "lists no host; add one per machine, e.g. {p0: {address: 10.0.0.1}}")
    hosts: dict[str, _HostDraft] = {}
    for name, settings in value.items():
        if not isinstance(name, str):
            r.error(path, f"host name {show(name)} is not a string")
            continue
        hpath = child(path, name)
        try:
            checks.host_name(name)
        except InvalidValue as bad:
            r.error(hpath, str(bad))
        layer = _ssh_layer(settings, hpath, r, of_host=True)
        block = settings if isinstance(settings, Mapping) else None
        address = r.string(block, "address", hpath, default=None, check=checks.address)
        hosts[name] = _HostDraft(name, hpath, address, layer)
    _check_unique_addresses(hosts.values(), r)
    return hosts


def _check_unique_addresses(hosts: Iterable[_HostDraft], r: Reader) -> None:
    first_with: dict[str, str] = {}
    for host in hosts:
        if host.address is None:
            continue
        key = host.address.lower()
        if key in first_with:
            r.error(f"{host.path}.address", f"{show(host.address)} is also the address of host "
                                            f"{show(first_with[key])}; list each machine once and give it "
                                            "every role it has")
        else:
            first_with[key] = host.name


def _instances(cfg: dict[str, Any], role: str, r: Reader) -> list[_InstanceDraft]:
    path = NAMESPACE + role
    if role not in cfg:
        return []
    value = cfg[role]
    example = f'{{name: {role}-0, hosts: [{role[0]}0], devices: "0-15"}}'
    if not isinstance(value, (list, tuple)):
        r.error(path, f"expected a list of {role} instances like [{example}]; got {kind(value)}")
        return []
    if not value:
        r.error(path, f"lists no {role} instance; at least one is needed, e.g. [{example}]")
    return [_instance(entry, role, item(path, i), r) for i, entry in enumerate(value)]


def _instance(value: Any, role: str, path: str, r: Reader) -> _InstanceDraft:
    keys = PREFILL_KEYS if role == "prefill" else DECODE_KEYS
    required = {"name": f"{role}-0", "hosts": f"[{role[0]}0] (master first)", "devices": '"0-15"'}
    block = r.block(value, path, keys, required=required)
    defaults = PREFILL_ENGINE if role == "prefill" else DECODE_ENGINE
    tensor_parallel = 1
    if role == "decode":
        tensor_parallel = r.integer(block, "tensorParallel", path, default=1, lo=1, hi=64)
    return _InstanceDraft(
        role=role,
        path=path,
        name=r.string(block, "name", path, check=checks.instance_name),
        hosts=_instance_hosts(block, path, r),
        devices=_devices(block, path, r),
        tensor_parallel=tensor_parallel,
        engine=_engine(block, path, defaults, r),
    )


def _instance_hosts(block: Mapping[str, Any] | None, path: str, r: Reader) -> tuple[str, ...] | None:
    if block is None or "hosts" not in block:
        return None
    value, hpath = block["hosts"], child(path, "hosts")
    if isinstance(value, str):
        value = [value]  # `hosts: p0` is a one-host instance
    if not isinstance(value, (list, tuple)):
        r.error(hpath, f"expected a list of host names like [p0, p1], master first; got {kind(value)}")
        return None
    if not value:
        r.error(hpath, "lists no host; give at least one host name from pdstack:hosts, e.g. [p0]")
        return None
    names: list[str] = []
    for i, name in enumerate(value):
        if not isinstance(name, str):
            r.error(item(hpath, i), f"expected a host name from pdstack:hosts; got {kind(name)}")
        elif name in names:
            r.error(item(hpath, i), f"host {show(name)} is listed twice; list each host of the instance once")
        else:
            names.append(name)
    return tuple(names) or None


def _devices(block: Mapping[str, Any] | None, path: str, r: Reader) -> tuple[int, ...] | None:
    if block is None or "devices" not in block:
        return None
    try:
        return parse_devices(block["devices"])
    except InvalidValue as bad:
        r.error(child(path, "devices"), str(bad))
        return None


def _engine(instance: Mapping[str, Any] | None, path: str, defaults: EngineSettings, r: Reader) -> EngineSettings:
    if instance is None or "engine" not in instance:
        return defaults
    path = child(path, "engine")
    block = r.block(instance["engine"], path, ENGINE_KEYS)
    return EngineSettings(
        max_model_len=r.integer(block, "maxModelLen", path, default=defaults.max_model_len),
        max_num_seqs=r.integer(block, "maxNumSeqs", path, default=defaults.max_num_seqs),
        gpu_memory_utilization=r.fraction(block, "gpuMemoryUtilization", path,
                                          default=defaults.gpu_memory_utilization),
        extra_args=_extra_args(block, path, r),
        env=_env(block, path, r),
    )


def _extra_args(block: Mapping[str, Any] | None, path: str, r: Reader) -> tuple[str, ...]:
    found, value = r.present(block, "extraArgs", ())
    if not found:
        return ()
    path = child(path, "extraArgs")
    hint = 'write a string like "--foo 1" or a list of strings like ["--foo", "1"]'
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as err:
            r.error(path, f"cannot be split into words ({err}); {hint}")
            return ()
    if not isinstance(value, (list, tuple)):
        r.error(path, f"expected arguments to append to `vllm serve`; got {kind(value)}; {hint}")
        return ()
    for i, word in enumerate(value):
        if not isinstance(word, str):
            r.error(item(path, i), f"expected a string; got {kind(word)}; {hint}")
    return tuple(w for w in value if isinstance(w, str))


def _env(block: Mapping[str, Any] | None, path: str, r: Reader) -> tuple[tuple[str, str], ...]:
    found, value = r.present(block, "env", None)
    if not found:
        return ()
    path = child(path, "env")
    if not isinstance(value, Mapping):
        r.error(path, "expected a map of variable name to value, like {VLLM_LOGGING_LEVEL: DEBUG}; "
                      f"got {kind(value)}")
        return ()
    env: dict[str, str] = {}
    for name, setting in value.items():
        if not isinstance(name, str) or not checks.ENV_NAME.fullmatch(name):
            where = child(path, name) if isinstance(name, str) else path
            r.error(where, f"{show(name)} is not a variable name; use letters, digits and '_', not starting with a "
                           "digit, like VLLM_LOGGING_LEVEL")
            continue
        text = _env_value(setting)
        if text is None:
            r.error(child(path, name), f"expected a string, number or boolean; got {kind(setting)}")
        else:
            env[name] = text
    return tuple(sorted(env.items()))


def _env_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"  # as written in YAML, which is what shell checks expect
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # an int too long to print
            return None
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return None


def _proxy(cfg: dict[str, Any], r: Reader) -> Proxy:
    path = f"{NAMESPACE}proxy"
    if "proxy" not in cfg:
        return Proxy(host="")
    block = r.block(cfg["proxy"], path, PROXY_KEYS, required={"host": "p0 (a host of pdstack:hosts)"})
    d = Proxy(host="")
    return Proxy(
        host=r.string(block, "host", path) or "",
        port=r.integer(block, "port", path, default=d.port, lo=PORT_MIN, hi=PROXY_PORT_MAX),
        prefill_policy=r.choice(block, "prefillPolicy", path, default=d.prefill_policy, choices=profile.PROXY_POLICIES),
        decode_policy=r.choice(block, "decodePolicy", path, default=d.decode_policy, choices=profile.PROXY_POLICIES),
        prefill_max_num_seqs=r.integer(block, "prefillMaxNumSeqs", path, default=d.prefill_max_num_seqs),
        decode_max_num_seqs=r.integer(block, "decodeMaxNumSeqs", path, default=d.decode_max_num_seqs),
    )


def _ports(cfg: dict[str, Any], r: Reader) -> Ports:
    path = f"{NAMESPACE}ports"
    if "ports" not in cfg:
        return Ports()
    block = r.block(cfg["ports"], path, ("masterBase", "apiBase"))
    d = Ports()
    return Ports(
        master_base=r.integer(block, "masterBase", path, default=d.master_base, lo=PORT_MIN, hi=PORT_MAX),
        api_base=r.integer(block, "apiBase", path, default=d.api_base, lo=PORT_MIN, hi=PORT_MAX),
    )


def _readiness(cfg: dict[str, Any], r: Reader) -> Readiness:
    path = f"{NAMESPACE}readiness"
    if "readiness" not in cfg:
        return Readiness()
    block = r.block(cfg["readiness"], path, ("timeoutSeconds", "intervalSeconds"))
    d = Readiness()
    readiness = Readiness(
        timeout_seconds=r.integer(block, "timeoutSeconds", path, default=d.timeout_seconds),
        interval_seconds=r.integer(block, "intervalSeconds", path, default=d.interval_seconds),
    )
    if readiness.interval_seconds > readiness.timeout_seconds:
        r.error(f"{path}.intervalSeconds", f"{readiness.interval_seconds} is longer than timeoutSeconds "
                                            f"{readiness.timeout_seconds}; poll more often than the timeout")
    return readiness


# ---------------------------------------------------------------------------------------------------
# Pass 2: references between blocks; None marks a value already reported as invalid


def _check_references(d: _Drafts, r: Reader) -> None:
    instances = d.prefill + d.decode
    _check_instance_names(instances, r)
    if d.hosts:  # else pdstack:hosts itself is reported, and every reference would repeat it
        for inst in instances:
            for i, name in enumerate(inst.hosts or ()):
                if name not in d.hosts:
                    r.error(item(child(inst.path, "hosts"), i), _undefined_host(name, d.hosts))
        if d.proxy.host and d.proxy.host not in d.hosts:
            r.error(f"{NAMESPACE}proxy.host", _undefined_host(d.proxy.host, d.hosts))
    _check_one_instance_per_host(d.prefill, r)
    _check_one_instance_per_host(d.decode, r)
    _check_shared_devices(d.prefill, d.decode, r)
    _check_engine_host_addresses(instances, d.hosts, r)
    for inst in d.decode:
        _check_tensor_parallel(inst, r)
    _check_ssh_keys(d, r)


def _undefined_host(name: str, hosts: Mapping[str, Any]) -> str:
    hint = closest(name, sorted(hosts))
    guess = f"did you mean {show(hint)}? " if hint else ""
    defined = ", ".join(show(h) for h in sorted(hosts))
    return f"host {show(name)} is not defined in pdstack:hosts; {guess}defined hosts: {defined}"


def _check_instance_names(instances: list[_InstanceDraft], r: Reader) -> None:
    first_with: dict[str, str] = {}
    for inst in instances:
        if inst.name is None:
            continue
        if inst.name in first_with:
            r.error(f"{inst.path}.name", f"{show(inst.name)} is also the name of {first_with[inst.name]}; instance "
                                         "names must be unique across prefill and decode")
        else:
            first_with[inst.name] = inst.path


def _check_one_instance_per_host(instances: list[_InstanceDraft], r: Reader) -> None:
    owner: dict[str, str] = {}
    for inst in instances:
        for i, name in enumerate(inst.hosts or ()):
            if name in owner:
                r.error(item(child(inst.path, "hosts"), i),
                        f"host {show(name)} is also in {owner[name]}: a host used by two instances of the same "
                        f"role is not supported (it runs one {inst.role} container); give each instance its own hosts")
            else:
                owner[name] = inst.path


def _check_shared_devices(prefill: list[_InstanceDraft], decode: list[_InstanceDraft], r: Reader) -> None:
    for p in prefill:
        for dec in decode:
            shared = [h for h in dec.hosts or () if h in (p.hosts or ())]
            overlap = sorted(set(p.devices or ()) & set(dec.devices or ()))
            if shared and overlap:
                r.error(f"{dec.path}.devices",
                        f"devices {format_devices(overlap)} on host {', '.join(show(h) for h in shared)} are also "
                        f"used by {p.path}; "
                        'a host in both roles must split its devices, e.g. "0-7" for prefill and "8-15" for decode')


def _check_engine_host_addresses(instances: list[_InstanceDraft], hosts: Mapping[str, _HostDraft] | None,
                                 r: Reader) -> None:
    """Prefill/decode hosts appear in ranktables, which hold IPv4 addresses (server_ip), not names."""
    reported = set()
    for inst in instances:
        for name in inst.hosts or ():
            host = (hosts or {}).get(name)
            if host is None or host.address is None or name in reported:
                continue
            if not all(label.isdigit() for label in host.address.split(".")):
                reported.add(name)
                r.error(f"{host.path}.address",
                        f"{show(host.address)} is a DNS name, but host {show(name)} runs {inst.path} and its "
                        "address goes into the HCCL ranktables, which need an IPv4 address like 10.0.0.1")


def _check_tensor_parallel(inst: _InstanceDraft, r: Reader) -> None:
    if inst.devices is None:
        return
    count, tp = len(inst.devices), inst.tensor_parallel
    if count % tp:
        fits = [str(n) for n in range(1, count + 1) if count % n == 0]
        r.error(f"{inst.path}.tensorParallel",
                f"{tp} does not divide the {count} devices of the instance; use one of {', '.join(fits)}, "
                f"or change devices ({DEVICES_HINT})")


def _check_ssh_keys(d: _Drafts, r: Reader) -> None:
    if d.ssh is None or d.ssh.has_key:
        return
    keyless = [h for h in d.hosts.values() if h.ssh is not None and not h.ssh.has_key]
    if keyless and len(keyless) == len(d.hosts):
        r.error(f"{NAMESPACE}ssh", "no SSH key is configured: set privateKeyPath (a key file on this machine) or "
                                   "privateKey (e.g. cat ~/.ssh/id_ed25519 | pulumi config set --secret --path "
                                   "pdstack:ssh.privateKey), here or per host in pdstack:hosts")
        return
    for host in keyless:
        r.error(host.path, "has no SSH key and pdstack:ssh sets none; set privateKeyPath or privateKey on this "
                           "host or in pdstack:ssh")


# ---------------------------------------------------------------------------------------------------
# Pass 3: the spec, and what only its derived ports show


def _build(d: _Drafts) -> ClusterSpec:
    stack = d.ssh or _SshLayer()
    return ClusterSpec(
        image=d.image,
        ssh=_merge_ssh(_SshLayer(), stack),
        model=d.model,
        paths=d.paths,
        containers=d.containers,
        hosts=tuple(_host(h, stack) for h in sorted(d.hosts.values(), key=lambda h: h.name)),
        prefill=tuple(_prefill(p) for p in d.prefill),
        decode=tuple(_decode(i) for i in d.decode),
        proxy=d.proxy,
        ports=d.ports,
        readiness=d.readiness,
    )


# Only called once no issue was found, so every draft value is set and valid.
def _host(h: _HostDraft, stack: _SshLayer) -> Host:
    assert h.address is not None
    return Host(name=h.name, address=h.address, ssh=_merge_ssh(stack, h.ssh))


def _prefill(p: _InstanceDraft) -> PrefillInstance:
    assert p.name is not None and p.hosts is not None and p.devices is not None
    return PrefillInstance(name=p.name, hosts=p.hosts, devices=p.devices, engine=p.engine)


def _decode(i: _InstanceDraft) -> DecodeInstance:
    assert i.name is not None and i.hosts is not None and i.devices is not None
    return DecodeInstance(name=i.name, hosts=i.hosts, devices=i.devices, tensor_parallel=i.tensor_parallel,
                          engine=i.engine)


def _merge_ssh(base: _SshLayer, own: _SshLayer | None) -> SshSettings:
    own = own or _SshLayer()
    # A host's own key replaces the stack-wide one as a whole: a path here and a key there is not "both".
    keys = own if own.has_key else base
    return replace(
        _SSH_DEFAULTS,
        user=own.user or base.user or _SSH_DEFAULTS.user,
        port=own.port or base.port or _SSH_DEFAULTS.port,
        private_key_path=keys.key_path,
        private_key=keys.key,
        host_key=own.host_key or base.host_key,
        known_hosts_file=own.known_hosts or base.known_hosts,
    )


def _check_ports(spec: ClusterSpec, r: Reader) -> None:
    for host, uses in sorted(topology.host_ports(spec).items()):
        for use in uses:
            if use.port > PORT_MAX:
                r.error(f"{NAMESPACE}ports", f"on host {host}, {use.what} would listen on port {use.port}, above "
                                             f"{PORT_MAX}; lower pdstack:ports.masterBase or apiBase")
    for host, port, first, second in topology.port_clashes(spec):
        at_proxy = host == spec.proxy.host and port == spec.proxy.port
        r.error(f"{NAMESPACE}proxy.port" if at_proxy else f"{NAMESPACE}ports",
                f"on host {host}, port {port} would be used by both {first} and {second}; change "
                f"{'pdstack:proxy.port' if at_proxy else 'pdstack:ports.masterBase or apiBase'}, "
                "or move one role to another host")
