"""`vllm serve MODEL [flags]` stand-in.

Accepts the flags Omni-Infer's start_api_servers.py passes (and a few more common ones),
with vLLM's rule that `--foo_bar` means `--foo-bar`; unknown flags exit with status 2 as
vLLM's argparse does. Environment variables the patched vLLM reads (VLLM_DP_*) override the
DP flags.
"""

import argparse
import json
import os
import sys
import uuid
from dataclasses import dataclass, field

from . import MIMICS_VLLM, SIMULATOR_ID


def _json_arg(text: str):
    try:
        val = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"invalid JSON {text!r}: {e}") from None
    if not isinstance(val, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return val


def _opt_json_arg(text: str):
    # start_api_servers.py passes --additional-config '' when there is none.
    return None if text.strip() == "" else _json_arg(text)


def _fraction(text: str) -> float:
    v = float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def _port(text: str) -> int:
    v = int(text)
    if not 0 <= v < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm serve",
        description=f"{SIMULATOR_ID}: a stand-in for `vllm serve` (vLLM {MIMICS_VLLM} flags). "
                    "It loads no weights and generates deterministic placeholder text.")
    p.add_argument("model", help="model directory (must exist)")
    a = p.add_argument
    a("--host", default="0.0.0.0")
    a("--port", type=_port, default=8000)
    a("--served-model-name", nargs="+")
    a("--tensor-parallel-size", "-tp", type=_positive, default=1)
    a("--pipeline-parallel-size", "-pp", type=_positive, default=1)
    a("--data-parallel-size", "-dp", type=_positive, default=1)
    a("--data-parallel-size-local", "-dpl", type=_positive)
    a("--data-parallel-rank", "-dpn", type=int)
    a("--data-parallel-address", "-dpa")
    a("--data-parallel-rpc-port", "-dpp", type=_port)
    a("--kv-transfer-config", type=_json_arg)
    a("--kv-events-config", type=_json_arg)
    a("--speculative-config", type=_json_arg)
    a("--additional-config", type=_opt_json_arg)
    a("--max-model-len", type=_positive)
    a("--gpu-memory-utilization", type=_fraction, default=0.9)
    a("--trust-remote-code", action="store_true")
    a("--block-size", type=_positive, default=128)
    a("--distributed-executor-backend", choices=["ray", "mp", "uni", "external_launcher"])
    a("--enforce-eager", action="store_true")
    a("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    a("--enable-expert-parallel", action="store_true")
    a("--disable-log-requests", action="store_true")
    a("--disable-log-stats", action="store_true")
    a("--max-num-seqs", type=_positive, default=256)
    a("--max-num-batched-tokens", type=_positive)
    a("--long-prefill-token-threshold", type=int, default=0)
    a("--middleware", action="append", default=[])
    a("--dtype", default="auto")
    a("--quantization", "-q")
    a("--seed", type=int)
    a("--tokenizer")
    a("--uvicorn-log-level", default="info")
    return p


def normalize_flags(argv: list[str]) -> list[str]:
    """vLLM's FlexibleArgumentParser rule: underscores in a long flag's name are dashes."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, val = arg.partition("=")
            arg = name.replace("_", "-") + eq + val
        out.append(arg)
    return out


@dataclass
class Config:
    model: str
    served_names: list
    host: str
    port: int
    tp: int
    dp_size: int
    dp_rank: int
    dp_rank_local: int
    dp_address: str
    dp_rpc_port: int
    kv_config: dict | None
    role: str                      # "prefill", "decode" or "both"
    engine_id: object
    max_model_len: int
    block_size: int
    max_num_seqs: int
    prefix_caching: bool
    executor_backend: str | None
    kv_events_config: dict | None
    kv_port: int
    rank_table: str | None
    global_rank_table: str | None
    visible_devices: str | None
    nnodes: int | None
    args: argparse.Namespace = field(repr=False, default=None)

    @property
    def served_name(self) -> str:
        return self.served_names[0]


def _env_int(env, name: str, default):
    val = env.get(name, "").strip()
    if not val:
        return default
    try:
        return int(val)
    except ValueError:
        raise SystemExit(f"error: environment variable {name}={val!r} is not an integer") from None


def make_config(args: argparse.Namespace, env=os.environ) -> Config:
    kv = args.kv_transfer_config
    kv_role = (kv or {}).get("kv_role")
    role = {"kv_producer": "prefill", "kv_consumer": "decode"}.get(kv_role, "both")
    if kv is not None and kv_role not in (None, "kv_producer", "kv_consumer", "kv_both"):
        raise SystemExit(f"error: kv-transfer-config kv_role {kv_role!r} is not one of "
                         "kv_producer, kv_consumer, kv_both")
    dp_size = _env_int(env, "VLLM_DP_SIZE", args.data_parallel_size)
    dp_rank = _env_int(env, "VLLM_DP_RANK", args.data_parallel_rank or 0)
    dp_local = _env_int(env, "VLLM_DP_RANK_LOCAL", dp_rank)
    if not 0 <= dp_rank < dp_size:
        raise SystemExit(f"error: DP rank {dp_rank} is outside 0..{dp_size - 1} "
                         f"(data parallel size {dp_size})")
    engine_id = (kv or {}).get("engine_id")
    if engine_id is None:
        engine_id = str(uuid.uuid4())
    nnodes = _env_int(env, "NNODES", None)
    return Config(
        model=args.model,
        served_names=args.served_model_name or [args.model],
        host=args.host,
        port=args.port,
        tp=args.tensor_parallel_size,
        dp_size=dp_size,
        dp_rank=dp_rank,
        dp_rank_local=dp_local,
        dp_address=env.get("VLLM_DP_MASTER_IP") or args.data_parallel_address or "127.0.0.1",
        dp_rpc_port=_env_int(env, "VLLM_DP_MASTER_PORT", args.data_parallel_rpc_port or 29550),
        kv_config=kv,
        role=role,
        engine_id=engine_id,
        max_model_len=args.max_model_len or 32768,
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        prefix_caching=args.enable_prefix_caching,
        executor_backend=args.distributed_executor_backend,
        kv_events_config=args.kv_events_config,
        kv_port=_env_int(env, "VLLM_LLMDATADIST_ZMQ_PORT", 5568) + dp_local,
        rank_table=env.get("RANK_TABLE_FILE_PATH") or None,
        global_rank_table=env.get("GLOBAL_RANK_TABLE_FILE_PATH") or None,
        visible_devices=env.get("ASCEND_RT_VISIBLE_DEVICES") or None,
        nnodes=nnodes,
        args=args,
    )


USAGE = (f"usage: vllm serve MODEL [flags]   ({SIMULATOR_ID}, stands in for vLLM {MIMICS_VLLM})\n"
         "       vllm --version\n")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-v"]):
        print(f"{MIMICS_VLLM} ({SIMULATOR_ID})")
        return 0
    if argv[:1] != ["serve"]:
        sys.stderr.write(USAGE)
        sys.stderr.write("vllm: error: the simulator implements only the `serve` command\n")
        return 2
    args = build_parser().parse_args(normalize_flags(argv[1:]))
    if not os.path.isdir(args.model):
        print(f"ERROR: model path {args.model!r} does not exist or is not a directory "
              "(a real engine fails here too)", file=sys.stderr)
        return 1
    cfg = make_config(args)
    from .engine import run  # after argument checks, so --help and errors stay fast
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
