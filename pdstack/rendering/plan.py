"""Cluster spec -> one HostPlan per container: the whole deployment, before anything remote happens."""
from __future__ import annotations

from dataclasses import dataclass

from .. import profile, topology
from ..config.model import ClusterSpec, DecodeInstance, Host, PrefillInstance
from . import ranktable, scripts
from .model import ContainerSpec, FileSpec, HealthCheck, HostPlan, digest


@dataclass(frozen=True)
class Deployment:
    prefill: tuple[tuple[PrefillInstance, tuple[HostPlan, ...]], ...]
    decode: tuple[tuple[DecodeInstance, tuple[HostPlan, ...]], ...]
    proxy: HostPlan
    prefill_servers: tuple[str, ...]  # host:port the proxy sends prefill requests to
    decode_servers: tuple[str, ...]

    def plans(self) -> tuple[HostPlan, ...]:
        out = [p for _, ps in self.prefill for p in ps] + [p for _, ps in self.decode for p in ps]
        return (*out, self.proxy)

    def device_reads(self) -> dict[str, tuple[Host, tuple[int, ...]]]:
        """Per prefill/decode host, the devices whose addresses must be read: one read per host, over
        every role it serves."""
        reads: dict[str, tuple[Host, tuple[int, ...]]] = {}
        for plan in self.plans():
            if plan.devices:
                _, devices = reads.get(plan.host.name, (plan.host, ()))
                reads[plan.host.name] = (plan.host, tuple(sorted(set(devices) | set(plan.devices))))
        return reads


def container_name(prefix: str, host: str) -> str:
    return f"{prefix}_{host}"  # the reference's naming: <DOCKER_NAME_X>_<inventory_hostname>


def log_dir(spec: ClusterSpec, name: str) -> str:
    # One directory per container: the reference writes server_<r>.log straight into LOG_PATH, so a
    # prefill and a decode container on one host would overwrite each other's logs.
    return f"{spec.paths.logs}/{name}"


def records_dir(spec: ClusterSpec) -> str:
    # Under a configured path, so it is writable wherever the scripts are (a non-root docker user).
    return f"{spec.paths.scripts}/.pdstack-owners"


def script_path(spec: ClusterSpec, name: str) -> str:
    return f"{spec.paths.scripts}/{name}.sh"


def container(spec: ClusterSpec, name: str, script: str, extra_env: tuple[tuple[str, str], ...] = ()) -> ContainerSpec:
    """The reference's `docker run` flags (§5.1), with the launch script as the main process."""
    args = ["--net=host", "--privileged=true", "-u", "root", "-w", "/data", "--entrypoint=bash",
            f"--shm-size={profile.SHM_SIZE}",
            "-e", f"RANKTABLE_SAVE_PATH={spec.paths.ranktables}", "-e", f"LOG_PATH={spec.paths.logs}",
            "-e", "PYTHONHASHSEED=123"]
    for k, v in extra_env:
        args += ["-e", f"{k}={v}"]
    for dev in profile.DEVICES:
        args.append(f"--device={dev}")
    mounts = list(profile.HOST_MOUNTS)
    for path in (spec.paths.logs, spec.model.path, spec.paths.scripts, spec.paths.ranktables):
        if path not in mounts:
            mounts.append(path)
    for path in mounts:
        args += ["-v", f"{path}:{path}"]
    args += ["-v", "{}:{}".format(*profile.TIMEZONE_MOUNT), "--label", "io.pdstack.managed=true"]
    return ContainerSpec(name=name, run_args=tuple(args), command=(script,))


def _parts(ctr: ContainerSpec, script: scripts.Script) -> tuple[tuple[str, str], ...]:
    parts = [("docker", digest(" ".join(ctr.run_args + ctr.command)))]
    if script.env:
        parts.append(("env", digest(script.env)))
    parts += [("args", digest(script.args)), ("script", digest(script.body))]
    return tuple(parts)


def _common_env(spec: ClusterSpec, role: str) -> list[tuple[str, str]]:
    decode_ips = ",".join(spec.host(h).address for inst in spec.decode for h in inst.hosts)
    return [
        ("ASCEND_GLOBAL_LOG_LEVEL", "3"),
        ("PYTORCH_NPU_ALLOC_CONF", "expandable_segments:True"),
        ("HCCL_BUFFSIZE", "50" if role == "prefill" else "200"),
        ("HCCL_CONNECT_TIMEOUT", "1800"), ("HCCL_EXEC_TIMEOUT", "120"),
        ("HCCL_INTRA_ROCE_ENABLE", "1"), ("HCCL_INTRA_PCIE_ENABLE", "0"),
        ("HCCL_OP_EXPANSION_MODE", "AIV"),
        ("VLLM_ENABLE_MC2", "1"), ("VLLM_LOGGING_LEVEL", "INFO"), ("VLLM_USE_V1", "1"),
        ("VLLM_WORKER_MULTIPROC_METHOD", "fork"),
        ("USING_LCCL_COM", "0"), ("OMNI_USE_DSV3", "1"), ("CPU_AFFINITY_CONF", "2"),
        ("TNG_HOST_COPY", "1"), ("AUTO_USE_UC_MEMORY", "1"), ("TASK_QUEUE_ENABLE", "2"),
        ("OMNI_REUSE_PREFILLED_TOKENS", "1"), ("OMNI_SKIP_DECODE_TOKENIZE", "1"),
        ("TOKENIZER_PROC_POOL", "0"), ("ENABLE_OVERWRITE_REQ_IDS", "0"), ("ENABLE_APC_EVENT", "0"),
        ("ROLE", role),
        ("PREFILL_POD_NUM", str(len(spec.prefill))),
        # The reference hard-codes 1 (one decode instance); pdstack supports several.
        ("DECODE_POD_NUM", str(len(spec.decode))),
        ("VLLM_LLMDATADIST_ZMQ_PORT", str(profile.LLMDATADIST_ZMQ_PORT)),
        ("GLOBAL_RANK_TABLE_FILE_PATH", ranktable.global_path(spec)),
        ("GLOBAL_DECODE_SERVER_IP_LIST", decode_ips),
    ]


def _serve_args(spec: ClusterSpec, role: str, inst, *, master: str, master_port: int, kv_rank: int) -> list[str]:
    eng = inst.engine
    args = [spec.model.path, "--trust-remote-code",
            "--gpu-memory-utilization", str(eng.gpu_memory_utilization), "--block-size", "128",
            "--tensor-parallel-size", str(inst.tensor_parallel),
            "--data-parallel-size", "1", "--data-parallel-size-local", "1",
            "--data-parallel-address", master, "--data-parallel-rpc-port", str(master_port)]
    if role == "prefill":
        args += ["--port", str(topology.prefill_api_port(spec, inst))]
    args += ["--served-model-name", spec.model.served_name, "--max-model-len", str(eng.max_model_len),
             "--speculative-config", scripts.SPECULATIVE_CONFIG,
             "--kv-transfer-config", scripts.kv_transfer_config(role, kv_rank, topology.kv_parallel_size(spec))]
    if role == "prefill":
        args += ["--max-num-batched-tokens", "49152", "--enforce-eager", "--no-enable-prefix-caching",
                 "--enable-expert-parallel", "--disable-log-requests", "--max-num-seqs", str(eng.max_num_seqs),
                 "--long-prefill-token-threshold", "49152"]
        if len(inst.hosts) > 1:
            args += ["--distributed-executor-backend", "ray"]
    else:
        args += ["--enable-expert-parallel", "--disable-log-requests", "--max-num-seqs", str(eng.max_num_seqs),
                 "--no-enable-prefix-caching", "--additional-config", scripts.DECODE_ADDITIONAL_CONFIG]
    args += ["--middleware", scripts.MIDDLEWARE, *eng.extra_args]
    return args


def _prefill(spec: ClusterSpec, inst: PrefillInstance) -> tuple[HostPlan, ...]:
    master = spec.host(inst.hosts[0])
    kv_rank = topology.prefill_kv_rank(spec, inst)
    master_port = topology.prefill_master_port(spec, inst)
    order = ranktable.ordered_hosts(spec, "prefill", inst)
    env = _common_env(spec, "prefill") + [
        ("RANK_TABLE_FILE_PATH", ranktable.instance_rank_table_path(spec, "prefill", inst)),
        ("LOCAL_DECODE_SERVER_IP_LIST", ""),
        ("MODEL_EXTRA_CFG_PATH", profile.MODEL_EXTRA_CFG_PREFILL),
        ("SERVER_OFFSET", "0"),
        ("ASCEND_RT_VISIBLE_DEVICES", ",".join(str(d) for d in inst.devices)),
        ("VLLM_DP_SIZE", "1"), ("VLLM_DP_RANK", "0"), ("VLLM_DP_RANK_LOCAL", "0"),
        ("VLLM_DP_MASTER_IP", master.address), ("VLLM_DP_MASTER_PORT", str(master_port)),
    ]
    ray_head = f"{master.address}:{profile.RAY_HEAD_PORT}" if len(inst.hosts) > 1 else None
    plans = []
    for name in inst.hosts:
        host = spec.host(name)
        cname = container_name(spec.containers.prefill, name)
        logs = log_dir(spec, cname)
        title = f"prefill instance {inst.name}, host {name}"
        host_env = list(env)
        if ray_head:
            host_env += [("MASTER_NODE_IP", master.address), ("NNODES", str(len(inst.hosts))),
                         ("NODE_RANK", str(order.index(name))),
                         ("NODE_IP_LIST", ",".join(spec.host(h).address for h in order)),
                         ("RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES", "1"),
                         ("RAY_CGRAPH_get_timeout", "7200"), ("RAY_ADDRESS", ray_head)]
        if name == inst.hosts[0]:
            script = scripts.prefill_master(
                title=title + " (master: the API server)", log_dir=logs, env=host_env, user_env=inst.engine.env,
                serve_args=_serve_args(spec, "prefill", inst, master=master.address, master_port=master_port,
                                       kv_rank=kv_rank),
                ray_head=ray_head, address=host.address)
            health = (HealthCheck(topology.prefill_api_port(spec, inst)),)
        else:
            script = scripts.prefill_worker(title=title + " (Ray worker)", log_dir=logs, env=host_env,
                                            user_env=inst.engine.env, head=ray_head, address=host.address,
                                            timeout=spec.readiness.timeout_seconds)
            health = ()
        plans.append(_plan(spec, key=f"{inst.name}-{name}", role="prefill", instance=inst.name, host=host,
                           cname=cname, script=script, devices=inst.devices, health=health, logs=logs,
                           ranktables=_ranktable_paths(spec, "prefill", inst, host.address)))
    return tuple(plans)


def _decode(spec: ClusterSpec, inst: DecodeInstance) -> tuple[HostPlan, ...]:
    master = spec.host(inst.hosts[0])
    master_port = topology.decode_master_port(spec, inst)
    env = _common_env(spec, "decode") + [
        ("RANK_TABLE_FILE_PATH", ranktable.instance_rank_table_path(spec, "decode", inst)),
        ("LOCAL_DECODE_SERVER_IP_LIST", ",".join(spec.host(h).address for h in inst.hosts)),
        ("MODEL_EXTRA_CFG_PATH", profile.MODEL_EXTRA_CFG_DECODE),
        ("VLLM_DP_SIZE", str(inst.data_parallel)),
        ("VLLM_DP_MASTER_IP", master.address), ("VLLM_DP_MASTER_PORT", str(master_port)),
    ]
    serve_args = _serve_args(spec, "decode", inst, master=master.address, master_port=master_port,
                             kv_rank=topology.decode_kv_rank(spec, inst))
    plans = []
    for rank, name in enumerate(inst.hosts):
        host = spec.host(name)
        cname = container_name(spec.containers.decode, name)
        logs = log_dir(spec, cname)
        offset = topology.decode_dp_offset(inst, rank)
        ports = topology.decode_api_ports(spec, inst, rank)
        script = scripts.decode_servers(
            title=f"decode instance {inst.name}, host {name} (DP ranks {offset}..{offset + len(ports) - 1})",
            # SERVER_OFFSET counts devices before this host (the reference's config_dict), not DP ranks.
            log_dir=logs, env=env + [("SERVER_OFFSET", str(rank * len(inst.devices)))], user_env=inst.engine.env,
            serve_args=serve_args, servers=[(p, offset + r) for r, p in enumerate(ports)])
        plans.append(_plan(spec, key=f"{inst.name}-{name}", role="decode", instance=inst.name, host=host,
                           cname=cname, script=script, devices=inst.devices,
                           health=tuple(HealthCheck(p) for p in ports), logs=logs,
                           ranktables=_ranktable_paths(spec, "decode", inst, host.address)))
    return tuple(plans)


def _ranktable_paths(spec: ClusterSpec, role: str, inst, address: str) -> tuple[str, ...]:
    paths = [ranktable.local_path(spec, role, address, inst.devices)]
    if len(inst.hosts) > 1:
        paths.append(ranktable.merged_path(spec, role, spec.host(inst.hosts[0]).address))
    return tuple(paths)


def _plan(spec: ClusterSpec, *, key, role, instance, host, cname, script, devices, health, logs, ranktables,
          extra_env=()) -> HostPlan:
    path = script_path(spec, cname)
    ctr = container(spec, cname, path, extra_env)
    return HostPlan(key=key, role=role, instance=instance, host=host, container=ctr,
                    files=(FileSpec(path, script.text, 0o750),), ranktable_paths=ranktables, devices=devices,
                    health=health, log_dir=logs, records=records_dir(spec), parts=_parts(ctr, script))


def _proxy(spec: ClusterSpec, prefill_servers, decode_servers) -> HostPlan:
    p = spec.proxy
    host = spec.host(p.host)
    cname = container_name(spec.containers.proxy, p.host)
    logs = log_dir(spec, cname)
    args = ["--listen-port", str(p.port), "--prefill-servers-list", ",".join(prefill_servers),
            "--decode-servers-list", ",".join(decode_servers), "--log-file", f"{logs}/nginx_error.log",
            "--log-level", "notice", "--core-num", "4", "--start-core-index", "16",
            "--prefill-lb-sdk", p.prefill_policy, "--decode-lb-sdk", p.decode_policy,
            "--prefill-max-num-seqs", str(p.prefill_max_num_seqs),
            "--decode-max-num-seqs", str(p.decode_max_num_seqs)]
    script = scripts.proxy(title=f"global proxy on host {p.host}", log_dir=logs, args=args, port=p.port)
    return _plan(spec, key=f"proxy-{p.host}", role="proxy", instance="proxy", host=host, cname=cname,
                 script=script, devices=(), health=(HealthCheck(p.port, None),), logs=logs, ranktables=(),
                 extra_env=(("PROXY_NODE_PORT", str(p.port)), ("MODEL_PATH", spec.model.path)))


def render(spec: ClusterSpec) -> Deployment:
    prefill = tuple((inst, _prefill(spec, inst)) for inst in spec.prefill)
    decode = tuple((inst, _decode(spec, inst)) for inst in spec.decode)
    prefill_servers = tuple(f"{spec.host(inst.hosts[0]).address}:{topology.prefill_api_port(spec, inst)}"
                            for inst in spec.prefill)
    decode_servers = tuple(f"{spec.host(h).address}:{port}" for inst in spec.decode
                           for rank, h in enumerate(inst.hosts) for port in topology.decode_api_ports(spec, inst, rank))
    return Deployment(prefill=prefill, decode=decode, proxy=_proxy(spec, prefill_servers, decode_servers),
                      prefill_servers=prefill_servers, decode_servers=decode_servers)
