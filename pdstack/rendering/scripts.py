"""Launch scripts: what each container runs as its main process (reference §5.4-§5.6).

The reference starts an idle `bash` container and `docker exec -d`s its scripts. pdstack makes the
launch script the container's main process instead, so the container's state is the service's state
(`docker ps` shows a dead engine as exited), and runs `vllm serve` directly with exact ports instead of
`pd_run.sh`/`start_api_servers.py`, which silently move to another port when one is busy and override
the env they are given (gotchas §9.7 and §9.9). The env and arguments are those the reference's
scripts end up with.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from .. import profile


@dataclass(frozen=True)
class Script:
    env: str  # the export block (a trigger part of its own)
    args: str  # the engine or proxy arguments (a trigger part of its own)
    text: str  # the whole script

    @property
    def body(self) -> str:
        """The script without its env and args, for the remaining trigger part."""
        return self.text.replace(self.env, "").replace(self.args, "")


def q(word: str | int) -> str:
    return shlex.quote(str(word))


def cmd(words) -> str:
    return " ".join(q(w) for w in words)


def export_block(env: list[tuple[str, str]], user_env: tuple[tuple[str, str], ...]) -> str:
    lines = [f"export {k}={q(v)}" for k, v in env]
    # The CANN toolkit's Python packages come first, whatever the image already put on PYTHONPATH.
    lines.append('export PYTHONPATH="/usr/local/Ascend/CANN-7.7/toolkit/python/site-packages${PYTHONPATH:+:$PYTHONPATH}"')
    if user_env:
        lines.append("# engine.env from the stack config")
        lines += [f"export {k}={q(v)}" for k, v in user_env]
    return "\n".join(lines) + "\n"


def header(title: str, log_dir: str) -> str:
    return "\n".join([
        "#!/bin/bash",
        f"# {title}",
        "# Rendered by pdstack and rewritten by every `pulumi up`: change the stack config, not this file.",
        "[ -f ~/.bashrc ] && . ~/.bashrc",
        # As the container's PID 1, bash ignores SIGTERM unless it traps it: pass it on to the servers
        # and wait for them, so `docker stop` lets them finish what is in flight.
        "trap 'kill -TERM $(jobs -p) 2>/dev/null; wait; exit 143' TERM",
        "unset https_proxy http_proxy proxy",
        f"mkdir -p {q(log_dir)}",
        # The NIC of the default route carries gloo/TP traffic, as in the reference.
        "IFNAME=$(ip -4 route list 0/0 | awk '{print $5}' | head -n 1)",
        'export GLOO_SOCKET_IFNAME="$IFNAME" TP_SOCKET_IFNAME="$IFNAME"',
        "",
    ])


def tee(log_file: str) -> str:
    return f"> >(tee -a {q(log_file)}) 2>&1"


def kv_transfer_config(role: str, kv_rank: int, kv_parallel_size: int) -> str:
    return json.dumps({
        "kv_connector": profile.KV_CONNECTOR, "kv_buffer_device": profile.KV_BUFFER_DEVICE,
        "kv_role": "kv_producer" if role == "prefill" else "kv_consumer",
        "kv_rank": kv_rank, "engine_id": kv_rank, "kv_parallel_size": kv_parallel_size,
    }, separators=(",", ":"))


SPECULATIVE_CONFIG = json.dumps({"method": "deepseek_mtp", "num_speculative_tokens": 1})
DECODE_ADDITIONAL_CONFIG = json.dumps({"graph_model_compile_config": {"level": 1, "use_ge_graph_cached": True}})
MIDDLEWARE = "omni.adaptors.vllm.entrypoints.middleware.param_check.ValidateSamplingParams"


def prefill_master(*, title: str, log_dir: str, env: list[tuple[str, str]], user_env, serve_args: list[str],
                   ray_head: str | None, address: str) -> Script:
    env_text = export_block(env, user_env)
    args_text = cmd([profile.VLLM, "serve", *serve_args])
    ray = ""
    if ray_head:
        ray = "\n".join([
            "ray stop --force >/dev/null 2>&1 || true",
            f"RAY_USAGE_STATS_ENABLED=0 {cmd([profile.RAY, 'start', '--head', f'--port={profile.RAY_HEAD_PORT}', '--num-gpus=1', f'--node-ip-address={address}'])} || exit 1",
            "",
        ])
    text = header(title, log_dir) + env_text + ray + f"exec {args_text} {tee(log_dir + '/server_0.log')}\n"
    return Script(env_text, args_text, text)


def prefill_worker(*, title: str, log_dir: str, env: list[tuple[str, str]], user_env, head: str,
                   address: str, timeout: int) -> Script:
    env_text = export_block(env, user_env)
    args_text = cmd([profile.RAY, "start", f"--address={head}", "--num-gpus=1", f"--node-ip-address={address}", "--block"])
    # The reference's join loop never times out (gotcha §9.10); this one does, and its exit shows.
    body = "\n".join([
        "ray stop --force >/dev/null 2>&1 || true",
        f"exec {tee(log_dir + '/ray_worker.log')}",
        f"deadline=$((SECONDS + {timeout}))",
        # In the background and waited for, so that the TERM trap runs at once on `docker stop`.
        f"until {args_text} & wait $!; do",
        '  if [ "$SECONDS" -ge "$deadline" ]; then',
        f'    echo "pdstack: could not join the Ray head at {head} within {timeout} s" >&2; exit 1',
        "  fi",
        "  sleep 5",
        "done",
        "",
    ])
    return Script(env_text, args_text, header(title, log_dir) + env_text + body)


def decode_servers(*, title: str, log_dir: str, env: list[tuple[str, str]], user_env,
                   serve_args: list[str], servers: list[tuple[int, int]]) -> Script:
    """`servers`: (port, global DP rank) per API server on this host, local index = position."""
    env_text = export_block(env, user_env)
    args_text = cmd([profile.VLLM, "serve", *serve_args])
    lines = []
    for r, (port, rank) in enumerate(servers):
        lines.append(f"VLLM_DP_RANK={rank} VLLM_DP_RANK_LOCAL={rank} {args_text} --port {port} "
                     f"{tee(f'{log_dir}/server_{r}.log')} &")
    # Like start_api_servers.py: when one server exits, stop the others and exit, so the container
    # stops and shows it instead of serving with a hole in the DP group.
    lines += [
        "wait -n",
        "status=$?",
        'echo "pdstack: an API server exited with status $status; stopping this host\'s other servers" >&2',
        "kill $(jobs -p) 2>/dev/null",
        "wait",
        'exit "$(( status == 0 ? 1 : status ))"',
        "",
    ]
    return Script(env_text, args_text, header(title, log_dir) + env_text + "\n".join(lines))


def proxy(*, title: str, log_dir: str, args: list[str], port: int) -> Script:
    args_text = cmd([profile.GLOBAL_PROXY, *args])
    probe = f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null"
    body = "\n".join([
        f"{args_text} || exit 1",
        # global_proxy.sh daemonizes (nginx does). Stay in the foreground while the proxy listens,
        # so that the container's state is the proxy's state.
        f"for _ in $(seq 1 120); do {probe} && break; sleep 0.5; done",
        f"while {probe}; do sleep 5; done",
        f'echo "pdstack: the proxy stopped listening on port {port}" >&2',
        "exit 1",
        "",
    ])
    return Script("", args_text, header(title, log_dir) + body)
