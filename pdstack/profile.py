"""The interfaces of the Omni-Infer / vLLM-Ascend A3 image that a deployment touches, in one place.

The simulator image implements exactly these (same executables, paths, flags, env and ports), so one
program deploys the real image on Ascend hosts and the simulator on the testbed with no test-only
branches. Values are those of the reference playbook (shared/reference/omni_ansible_spec.md §5).
"""
from __future__ import annotations

# Executables and paths inside the image.
VLLM = "vllm"
RAY = "ray"
GLOBAL_PROXY = "/workspace/omniinfer/tools/scripts/global_proxy.sh"
BASHRC = "~/.bashrc"  # sources CANN's set_env.sh on the real image; harmless elsewhere
MODEL_EXTRA_CFG_PREFILL = "/workspace/omniinfer/tests/test_config/test_config_prefill.json"
MODEL_EXTRA_CFG_DECODE = "/workspace/omniinfer/tests/test_config/test_config_decode_bf16.json"

# Ports the engine picks itself (not configurable in the reference).
RAY_HEAD_PORT = 6379
LLMDATADIST_ZMQ_PORT = 5568  # + local DP rank, on prefill hosts

# Host paths every container mounts at the same place (§5.1).
HOST_MOUNTS = (
    "/etc/hosts",
    "/usr/local/Ascend/driver",
    "/usr/local/dcmi",
    "/usr/local/bin/npu-smi",
    "/etc/ascend_install.info",
    "/usr/local/sbin",
    "/etc/hccn.conf",
    "/usr/bin/hccn_tool",
    "/data",
    "/tmp",
)
TIMEZONE_MOUNT = ("/usr/share/zoneinfo/Asia/Shanghai", "/etc/localtime")
DEVICES = ("/dev/davinci_manager", "/dev/hisi_hdc", "/dev/devmm_svm")
SHM_SIZE = "500g"

# KV connector of the reference (pd_run.sh): LLMDataDist over HCCL.
KV_CONNECTOR = "AscendHcclConnectorV1"
KV_BUFFER_DEVICE = "npu"

# How to read one device's RoCE address on a host (§5.3); the first line is `ipaddr:x.x.x.x`.
HCCN_TOOL = "hccn_tool"

# global_proxy.sh writes `server ... max_fails=3 fail_timeout=10s`: a server that failed stays out of
# the proxy's rotation this long after it is back (§5.6).
PROXY_FAIL_TIMEOUT_SECONDS = 10

# Balancing policies global_proxy.sh understands (§5.6).
PROXY_POLICIES = (
    "pd_score_balance", "prefill_score_balance", "weighted_least_active", "greedy_timeout",
    "least_total_load", "auto_balance_controller", "length_balance", "round_robin", "least_conn",
)
