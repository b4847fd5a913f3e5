"""The shell commands pdstack runs on a host over SSH, rendered from a HostPlan.

Every command is idempotent: pulumi-command re-runs `create` on an in-place update, and an
interrupted `pulumi up` may have run it already.
"""
from __future__ import annotations

import posixpath
import shlex

from .model import FileSpec, HostPlan

q = shlex.quote


def write_files_script(files: tuple[FileSpec, ...]) -> str:
    """A bash script (sent on stdin, so contents never appear on a command line) writing `files`."""
    lines = ["set -e", "umask 022"]
    for i, f in enumerate(files):
        marker = f"PDSTACK_EOF_{i}"
        if marker in f.content:
            raise ValueError(f"{f.path}: content contains the heredoc marker {marker}")
        lines += [f"mkdir -p {q(posixpath.dirname(f.path))}",
                  f"cat > {q(f.path)}.pdstack-tmp <<'{marker}'", f.content.rstrip("\n"), marker,
                  f"chmod {f.mode:o} {q(f.path)}.pdstack-tmp",
                  # Atomic: a container starting now reads the old or the new file, never half of one.
                  f"mv -f {q(f.path)}.pdstack-tmp {q(f.path)}"]
    return "\n".join(lines) + "\n"


def delete_files_command(paths: tuple[str, ...]) -> str:
    # Only the files pdstack wrote; directories are removed only when that leaves them empty.
    dirs = sorted({posixpath.dirname(p) for p in paths}, key=len, reverse=True)
    rm = "rm -f " + " ".join(q(p) for p in paths)
    rmdir = " ".join(q(d) for d in dirs)
    return f"{rm}; rmdir -p {rmdir} 2>/dev/null; true"


def pull_image_command(image: str) -> str:
    """Makes sure the image is on the host; prints its id (what the container will run)."""
    return (f"(docker image inspect {q(image)} >/dev/null 2>&1 || docker pull -q {q(image)} >/dev/null) "
            f"&& docker image inspect -f '{{{{.Id}}}}' {q(image)}")


def run_container_command(plan: HostPlan, image: str) -> str:
    name = q(plan.container.name)
    # Idempotent create: a container of this name left by an interrupted run is replaced.
    return (f"docker rm -f {name} >/dev/null 2>&1; {plan.container.docker_run(image)} >/dev/null "
            f"&& docker inspect -f '{{{{.Id}}}}' {name}")


def container_id_command(plan: HostPlan) -> str:
    return f"docker inspect -f '{{{{.Id}}}}' {q(plan.container.name)}"


STOP_GRACE_SECONDS = 20


def remove_container_command(plan: HostPlan) -> str:
    # SIGTERM first, so engines finish the requests in flight (a rolling update loses none of those).
    name = q(plan.container.name)
    return f"docker stop -t {STOP_GRACE_SECONDS} {name} >/dev/null 2>&1; docker rm -f {name} >/dev/null 2>&1; true"


def http_code(url: str) -> str:
    """Shell command printing the HTTP status `url` answers with ("000": no answer)."""
    return f"curl -s -o /dev/null -m 5 -w '%{{http_code}}' {q(url)}"


def readiness_script(plan: HostPlan, timeout: int, interval: int, settle: int = 0) -> str:
    """Waits until the container runs and every health port answers; on failure says why, with logs.
    `settle`: seconds to wait once healthy, for a proxy that took the host out of rotation to take it
    back (rolling updates wait for this before the next instance goes down)."""
    name = q(plan.container.name)
    host = plan.host.name
    checks = []
    for h in plan.health:
        checks.append(f"case \"$({http_code(h.url(plan.host.address))})\" in {h.good_codes}) ;; *) return 1;; esac")
    ports = ", ".join(str(h.port) for h in plan.health) or "none (container must keep running)"
    lines = [
        "command -v curl >/dev/null || { echo \"pdstack: curl is needed on host %s for readiness checks\" >&2; exit 1; }" % host,
        "all_healthy() {",
        *(f"  {c}" for c in checks),
        "  return 0",
        "}",
        "fail() {",
        f"  echo \"pdstack: host {host}: container {plan.container.name} $1 (ports: {ports}); last log lines:\" >&2",
        f"  docker logs --tail 40 {name} 2>&1 | sed 's/^/    /' >&2",
        "  exit 1",
        "}",
        f"deadline=$((SECONDS + {timeout}))",
        "stable=0",
        "while :; do",
        f"  state=$(docker inspect -f '{{{{.State.Status}}}}' {name} 2>/dev/null) || fail 'does not exist'",
        "  [ \"$state\" = running ] || fail \"is $state, not running\"",
        # Without health ports, a container that stays up for a few checks counts as ready.
        "  if all_healthy; then stable=$((stable + 1)); [ %d -gt 0 ] || [ $stable -ge 3 ] && break; fi" % len(plan.health),
        f"  [ $SECONDS -lt $deadline ] || fail 'did not become healthy within {timeout} s'",
        f"  sleep {interval}",
        "done",
        *([f"sleep {settle}  # the proxy's fail_timeout, so it routes to this host again"] if settle else []),
        f"echo \"pdstack: host {host}: {plan.container.name} ready\"",
    ]
    return "\n".join(lines) + "\n"
