"""The validated cluster spec: what a stack's `pdstack:*` config means, as frozen dataclasses.

Produced only by `pdstack.config.parse.parse_cluster`, which guarantees every invariant listed in the
docstrings below, so the rendering layer can rely on them without re-checking.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SshSettings:
    """How to reach a host. On a Host, exactly one of `private_key_path` / `private_key` is set; on
    ClusterSpec.ssh (the stack-wide settings) neither may be, when every host sets its own key."""
    user: str = "root"
    port: int = 22
    private_key_path: str | None = None  # as written in the config, `~` not expanded
    private_key: str | None = None  # the key itself; only ever wrapped in a Pulumi secret
    host_key: str | None = None  # "ssh-ed25519 AAAA…"; None = not verified (warned once)
    known_hosts_file: str | None = None  # an OpenSSH known_hosts file; fills host_key (see known_hosts.py)


@dataclass(frozen=True)
class Host:
    name: str  # key of `pdstack:hosts`; appended to container names
    address: str  # IPv4 address or DNS name the deployer and the other hosts reach it at
    ssh: SshSettings  # the stack-wide `pdstack:ssh` merged with this host's overrides


@dataclass(frozen=True)
class EngineSettings:
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float  # 0 < x <= 1
    extra_args: tuple[str, ...] = ()  # appended to `vllm serve`, already split into words
    env: tuple[tuple[str, str], ...] = ()  # sorted by name; applied after pdstack's own env


@dataclass(frozen=True)
class PrefillInstance:
    """One prefill instance: a single API server on `hosts[0]`, Ray workers on the other hosts."""
    name: str
    hosts: tuple[str, ...]  # host names, master first, no duplicates
    devices: tuple[int, ...]  # device ids used on every host of the instance, sorted, unique
    engine: EngineSettings

    @property
    def tensor_parallel(self) -> int:
        return len(self.devices) * len(self.hosts)


@dataclass(frozen=True)
class DecodeInstance:
    """One decode instance: data parallel across all its hosts, one API server per `tensor_parallel` devices."""
    name: str
    hosts: tuple[str, ...]  # DP master first
    devices: tuple[int, ...]  # per host; len(devices) % tensor_parallel == 0
    tensor_parallel: int
    engine: EngineSettings

    @property
    def servers_per_host(self) -> int:
        return len(self.devices) // self.tensor_parallel

    @property
    def data_parallel(self) -> int:
        return self.servers_per_host * len(self.hosts)


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int = 7000
    prefill_policy: str = "pd_score_balance"
    decode_policy: str = "pd_score_balance"
    prefill_max_num_seqs: int = 16
    decode_max_num_seqs: int = 32


@dataclass(frozen=True)
class Ports:
    master_base: int = 8000  # prefill instance k: DP RPC port master_base + k; decode j: master_base + 100 + j
    api_base: int = 9000  # prefill k: api_base + k; decode host at node rank n: api_base + 100 + n (+ server r)


@dataclass(frozen=True)
class Paths:
    logs: str = "/data/log_path"
    scripts: str = "/tmp/scripts_path"
    ranktables: str = "/tmp/ranktable_save_path"


@dataclass(frozen=True)
class Model:
    path: str = "/data/models/origin/bf16"
    served_name: str = "deepseek"


@dataclass(frozen=True)
class ContainerNames:
    prefill: str = "you_name_omni_infer_prefill"
    decode: str = "you_name_omni_infer_decode"
    proxy: str = "you_name_omni_infer_proxy"


@dataclass(frozen=True)
class Readiness:
    timeout_seconds: int = 900  # per host, from container start to every API port healthy
    interval_seconds: int = 2


@dataclass(frozen=True)
class ClusterSpec:
    image: str
    ssh: SshSettings
    model: Model
    paths: Paths
    containers: ContainerNames
    hosts: tuple[Host, ...]  # sorted by name
    prefill: tuple[PrefillInstance, ...]  # non-empty, config order (= kv rank order)
    decode: tuple[DecodeInstance, ...]  # non-empty, config order
    proxy: Proxy
    ports: Ports
    readiness: Readiness

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)
