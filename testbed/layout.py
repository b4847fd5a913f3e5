"""Where the testbed keeps things and how hosts are numbered: the one place these facts live."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# State survives `down` only for the keys (so stacks can pin host keys); everything else is rebuilt.
STATE_DIR = Path(os.environ.get("PDSTACK_TESTBED_DIR", "/var/lib/pdstack-testbed"))
KEYS_DIR = STATE_DIR / "keys"
HOSTS_DIR = STATE_DIR / "hosts"
STATE_FILE = STATE_DIR / "testbed.json"
CLIENT_KEY = KEYS_DIR / "id_ed25519"
KNOWN_HOSTS = KEYS_DIR / "known_hosts"  # the hosts' keys, for stacks to pin

# Namespace handles must sit on a private mount, under /run so a reboot clears them.
NS_DIR = Path("/run/pdstack-testbed/ns")

# One private /24 of our own; nothing is ever routed beyond the bridge.
SUBNET_PREFIX = os.environ.get("PDSTACK_TESTBED_PREFIX", "10.77.0")
SUBNET = f"{SUBNET_PREFIX}.0/24"
GATEWAY = f"{SUBNET_PREFIX}.1"
BRIDGE = "pdtb0"
FIRST_HOST_OCTET = 11
MAX_HOSTS = 200

REGISTRY_PORT = 5000
REGISTRY = f"{GATEWAY}:{REGISTRY_PORT}"
REGISTRY_CACHE = Path(os.environ.get("PDSTACK_CACHE", str(Path.home() / ".cache" / "pdstack"))) / "registry"

DEFAULT_HOSTS = 9
DEFAULT_DEVICES = 16
MAX_DEVICES = 16
MODEL_PATH = "/data/models/origin/bf16"


@dataclass(frozen=True)
class HostLayout:
    index: int

    @property
    def name(self) -> str:
        return f"host{self.index}"

    @property
    def address(self) -> str:
        return f"{SUBNET_PREFIX}.{FIRST_HOST_OCTET + self.index - 1}"

    @property
    def netns(self) -> str:
        return f"pdtb-{self.name}"

    @property
    def veth(self) -> str:
        # Linux caps interface names at 15 characters.
        return f"pdtbh{self.index}"

    @property
    def dir(self) -> Path:
        return HOSTS_DIR / self.name

    @property
    def root(self) -> Path:
        """Per-host files that are bind-mounted over the machine's paths inside the host."""
        return self.dir / "root"

    @property
    def mnt_ns(self) -> Path:
        return NS_DIR / f"{self.name}.mnt"

    @property
    def uts_ns(self) -> Path:
        return NS_DIR / f"{self.name}.uts"

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    @property
    def host_key(self) -> Path:
        return KEYS_DIR / f"{self.name}_ssh_host_ed25519_key"

    @property
    def sshd_pid(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def dockerd_pid(self) -> Path:
        return self.dir / "dockerd.pid"

    def public_key(self) -> str:
        """The host's SSH key as known_hosts and `hostKey` take it: "<type> <base64>"."""
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    def device_address(self, device: int) -> str:
        # Fake NPU (RoCE) addresses: only ever written into ranktables, never routed or contacted.
        return f"10.78.{self.index}.{device + 1}"


def host(index: int) -> HostLayout:
    if not 1 <= index <= MAX_HOSTS:
        raise ValueError(f"host index {index} outside 1..{MAX_HOSTS}")
    return HostLayout(index)
