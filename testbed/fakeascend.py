"""The Ascend host parts a deployment expects, faked per host: device addresses, tools, driver dirs.

Each host gets its own copy under its root dir; `host.py` bind-mounts them over the machine's paths
inside that host's mount namespace, so hosts never see each other's files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .layout import MODEL_PATH, HostLayout

# (path inside the host, kind). Every one is bind-mounted from <host root><path>.
HOST_PATHS: list[tuple[str, str]] = [
    ("/data", "dir"),
    ("/tmp", "dir"),
    ("/var/lib/docker", "dir"),
    ("/etc/docker", "dir"),  # the daemon's identity (key.json) and config are per machine
    # root's home is per machine too: an SSH command's bash would otherwise source this machine's
    # ~/.bashrc (a developer's pyenv, cargo, ...) on every session, which real hosts do not run.
    ("/root", "dir"),
    ("/etc/hosts", "file"),
    ("/etc/hccn.conf", "file"),
    ("/etc/ascend_install.info", "file"),
    ("/usr/bin/hccn_tool", "file"),
    ("/usr/local/Ascend", "dir"),
    ("/usr/local/dcmi", "dir"),
    ("/usr/local/bin/npu-smi", "file"),
]

# Device nodes the reference `docker run` passes with --device. They are made as copies of /dev/null
# (char 1:3) so that nothing can reach real hardware through them.
DEVICE_NODES_FIXED = ["davinci_manager", "hisi_hdc", "devmm_svm"]

HCCN_TOOL = """#!/bin/sh
# pdstack testbed stand-in for Ascend's hccn_tool. It answers the query deployments make,
# `hccn_tool -i DEVICE -ip -g`, from this host's /etc/hccn.conf, in the real tool's output format.
dev=""; want=""
while [ $# -gt 0 ]; do
  case "$1" in
    -i) dev="$2"; shift 2 ;;
    -ip) want=ip; shift ;;
    -g) shift ;;
    *) echo "hccn_tool (pdstack testbed): unsupported argument: $1" >&2; exit 1 ;;
  esac
done
if [ -z "$dev" ] || [ "$want" != ip ]; then
  echo "usage: hccn_tool -i DEVICE -ip -g (pdstack testbed supports only this query)" >&2; exit 1
fi
addr=$(sed -n "s/^address_${dev}=//p" /etc/hccn.conf)
mask=$(sed -n "s/^netmask_${dev}=//p" /etc/hccn.conf)
if [ -z "$addr" ]; then echo "hccn_tool: device ${dev} does not exist" >&2; exit 1; fi
echo "ipaddr:${addr}"
echo "netmask:${mask}"
"""

NPU_SMI = """#!/bin/sh
# pdstack testbed stand-in for npu-smi: `npu-smi info` lists this host's simulated devices.
if [ "$1" != "info" ]; then echo "npu-smi (pdstack testbed): only 'info' is supported" >&2; exit 1; fi
echo "+------------------------------------------------------------------+"
echo "| npu-smi (pdstack testbed simulation)   host: $(hostname)"
echo "+------+-------------------+----------------------------------------+"
echo "| NPU  | Name              | Health                                 |"
sed -n 's/^address_\\([0-9]*\\)=.*/\\1/p' /etc/hccn.conf | while read -r d; do
  printf '| %-4s | %-17s | %-38s |\\n' "$d" "Ascend910-sim" "OK"
done
echo "+------+-------------------+----------------------------------------+"
"""


def hccn_conf(host: HostLayout, devices: int) -> str:
    lines = []
    for d in range(devices):
        lines += [f"address_{d}={host.device_address(d)}", f"netmask_{d}=255.255.0.0"]
    return "\n".join(lines) + "\n"


def etc_hosts(host: HostLayout, all_hosts: list[HostLayout]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{h.address}\t{h.name}" for h in all_hosts]
    return "\n".join(lines) + "\n"


def write_host_root(host: HostLayout, devices: int, all_hosts: list[HostLayout]) -> None:
    root = host.root
    for path, kind in HOST_PATHS:
        target = root / path.lstrip("/")
        if kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    _write(root / "etc/hosts", etc_hosts(host, all_hosts))
    _write(root / "etc/hccn.conf", hccn_conf(host, devices))
    _write(root / "etc/ascend_install.info",
           "UserName=HwHiAiUser\nUserGroup=HwHiAiUser\nDriver_Install_Type=full\n"
           "Driver_Install_Path_Param=/usr/local/Ascend\n# pdstack testbed simulation\n")
    _write(root / "usr/bin/hccn_tool", HCCN_TOOL, mode=0o755)
    _write(root / "usr/local/bin/npu-smi", NPU_SMI, mode=0o755)
    driver = root / "usr/local/Ascend/driver"
    driver.mkdir(parents=True, exist_ok=True)
    _write(driver / "version.info", "Version=25.2.1-pdstack-testbed\n")
    (root / "usr/local/dcmi").mkdir(parents=True, exist_ok=True)
    model = root / MODEL_PATH.lstrip("/")
    model.mkdir(parents=True, exist_ok=True)
    _write(model / "config.json", json.dumps({
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "pdstack_simulator": True,
        "note": "placeholder written by the pdstack testbed; the simulator image serves it"}, indent=2) + "\n")


def device_nodes(devices: int) -> list[str]:
    return [f"/dev/davinci{d}" for d in range(devices)] + [f"/dev/{n}" for n in DEVICE_NODES_FIXED]


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    os.chmod(path, mode)
