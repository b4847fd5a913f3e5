"""What rendering produces: per host and role, the container, its files and how to tell it is ready."""
from __future__ import annotations

import fnmatch
import hashlib
import shlex
from dataclasses import dataclass, field

from ..config.model import Host


def digest(text: str) -> str:
    """Short, stable content hash for trigger parts (12 hex chars: readable in a preview diff)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FileSpec:
    path: str
    content: str
    mode: int = 0o644
    # Sent gzip-compressed: machine-written data whose size grows with the cluster (ranktables), which
    # would otherwise fill the Pulumi state (it keeps what is sent, twice). Scripts are sent as text, so
    # `pulumi preview --diff` shows their changed lines.
    compressed: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    run_args: tuple[str, ...]  # `docker run` options, between `run` and the image
    command: tuple[str, ...]  # after the image

    def docker_run(self, image: str, labels: tuple[tuple[str, str], ...] = ()) -> str:
        extra = [w for k, v in labels for w in ("--label", f"{k}={v}")]
        words = ["docker", "run", "-d", "--name", self.name, *self.run_args, *extra, image, *self.command]
        return " ".join(shlex.quote(w) for w in words)


@dataclass(frozen=True)
class HealthCheck:
    """An HTTP port on the host that must answer before the host counts as ready."""
    port: int
    path: str | None = "/health"  # None: any HTTP answer will do (the proxy's nginx has no /health)

    def url(self, address: str) -> str:
        return f"http://{address}:{self.port}{self.path or '/'}"

    @property
    def good_codes(self) -> str:
        """The HTTP status codes that count as healthy, as a shell `case` (and fnmatch) pattern."""
        return "200" if self.path else "[1-5][0-9][0-9]"

    def accepts(self, code: str) -> bool:
        return fnmatch.fnmatchcase(code, self.good_codes)


@dataclass(frozen=True)
class HostPlan:
    """One container on one host, everything pdstack writes for it, and its readiness checks."""
    key: str  # stable resource name: "<instance>-<host>" or "proxy-<host>"
    role: str  # "prefill" | "decode" | "proxy"
    instance: str  # instance name; "proxy" for the proxy
    host: Host
    container: ContainerSpec
    files: tuple[FileSpec, ...]  # rendered without device addresses (launch script)
    ranktable_paths: tuple[str, ...]  # this container's instance ranktables (content needs device addresses)
    devices: tuple[int, ...]  # devices whose addresses are read on this host (empty for the proxy)
    health: tuple[HealthCheck, ...]
    log_dir: str
    records: str  # where the host records who wrote which file (see remote.FileOwner)
    # Named parts of what the container depends on. A change of any part replaces the container,
    # and the part's name is what `pulumi preview --diff` shows as the reason.
    parts: tuple[tuple[str, str], ...] = field(default=())
