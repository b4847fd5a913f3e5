"""The shell commands pdstack runs on a host over SSH, rendered from a HostPlan.

Every command is idempotent: pulumi-command re-runs `create` on an in-place update, and an
interrupted `pulumi up` may have run it already.
"""
from __future__ import annotations

import base64
import gzip
import posixpath
import shlex
from dataclasses import dataclass

from .model import FileSpec, HostPlan, digest

q = shlex.quote


@dataclass(frozen=True)
class FileOwner:
    """Who wrote a set of files on a host, and where the host keeps that record.

    Two resources can write the same path on one host: a host renamed in place (the new resources are
    created before the old ones are deleted, and the instance ranktables and the global ranktable keep
    their paths), or a role moving between resources. A file is deleted only by the resource that
    wrote it last, so deleting the old resource never removes what the new one has just written. A
    resource also remembers its paths, so when a change renames one (a new device list renames the
    local ranktable), the next write removes the file at the old path.
    """
    records: str  # directory on the host: one record per path (its writer), one list per writer
    name: str  # unique per resource and stack

    @property
    def list_file(self) -> str:
        return f"{self.records}/o-{digest(self.name)}"

    def record(self, path: str) -> str:
        return f"{self.records}/p-{digest(path)}"


def write_files_script(files: tuple[FileSpec, ...], owner: FileOwner) -> str:
    """A bash script (sent on stdin, so contents never appear on a command line) writing `files`."""
    keep = " ".join(digest(f.path) for f in files)
    lines = ["set -e -o pipefail", "umask 022", f"me={q(owner.name)}", f"mkdir -p {q(owner.records)}",
             # Paths this writer wrote before and writes no more, if it still owns them.
             f"if [ -f {q(owner.list_file)} ]; then",
             "  while read -r key path; do",
             f"    case \" {keep} \" in *\" $key \"*) continue;; esac",
             f"    record={q(owner.records)}/p-$key",
             "    if [ \"$(cat \"$record\" 2>/dev/null)\" = \"$me\" ]; then",
             "      rm -f \"$path\" \"$record\"; rmdir -p \"$(dirname \"$path\")\" 2>/dev/null || true",
             "    fi",
             f"  done < {q(owner.list_file)}",
             "fi"]
    for i, f in enumerate(files):
        marker = f"PDSTACK_EOF_{i}"
        if marker in f.content:
            raise ValueError(f"{f.path}: content contains the heredoc marker {marker}")
        lines.append(f"mkdir -p {q(posixpath.dirname(f.path))}")
        if f.compressed:
            # mtime=0: the same content gives the same stdin, so an unchanged file shows no diff.
            packed = base64.encodebytes(gzip.compress(f.content.encode(), 9, mtime=0)).decode()
            lines += [f"base64 -d <<'{marker}' | gunzip > {q(f.path)}.pdstack-tmp", packed.rstrip("\n"), marker]
        else:
            lines += [f"cat > {q(f.path)}.pdstack-tmp <<'{marker}'", f.content.rstrip("\n"), marker]
        lines += [f"chmod {f.mode:o} {q(f.path)}.pdstack-tmp",
                  # Atomic: a container starting now reads the old or the new file, never half of one.
                  f"mv -f {q(f.path)}.pdstack-tmp {q(f.path)}",
                  f"printf '%s\\n' \"$me\" > {q(owner.record(f.path))}"]
    listing = "\n".join(f"{digest(f.path)} {f.path}" for f in files)
    lines += [f"printf '%s\\n' {q(listing)} > {q(owner.list_file)}"]
    return "\n".join(lines) + "\n"


def delete_files_command(paths: tuple[str, ...], owner: FileOwner) -> str:
    # Only the files this writer wrote last (or that nobody recorded); directories are removed only
    # when that leaves them empty.
    dirs = sorted({posixpath.dirname(p) for p in paths} | {owner.records}, key=len, reverse=True)
    steps = [f"me={q(owner.name)}"]
    for p in paths:
        r = q(owner.record(p))
        steps.append(f"{{ [ ! -e {r} ] || [ \"$(cat {r})\" = \"$me\" ]; }} && rm -f {q(p)} {r}")
    steps += [f"rm -f {q(owner.list_file)}", "rmdir -p " + " ".join(q(d) for d in dirs) + " 2>/dev/null", "true"]
    return "; ".join(steps)


def docker_usable(host: str) -> str:
    """Fails, naming the host and docker's own words, when docker cannot be used there. Commands that
    would otherwise swallow docker's errors (a delete must fail, not forget a container that exists)."""
    return (f"docker version >/dev/null 2>&1 || {{ echo \"pdstack: host {host}: cannot use docker: "
            f"$(docker version 2>&1 | tail -n 1)\" >&2; exit 1; }}")


def pull_image_command(image: str, host: str) -> str:
    """Makes sure the image is on the host; prints its id (what the container will run)."""
    return (f"{docker_usable(host)}; "
            f"(docker image inspect {q(image)} >/dev/null 2>&1 || docker pull -q {q(image)} >/dev/null) "
            f"&& docker image inspect -f '{{{{.Id}}}}' {q(image)}")


SLOT_LABEL = "io.pdstack.slot"
STOP_GRACE_SECONDS = 20


def run_container_command(plan: HostPlan, image: str, slot: str) -> str:
    """Starts the container; prints its id. `slot` names the stack and role: a host runs at most one
    container per slot, so another container in it is a leftover of a renamed host or container
    prefix (created before the old resource is deleted) and would hold the ports this one needs."""
    name = q(plan.container.name)
    label = q(f"label={SLOT_LABEL}={slot}")
    stale = (f"for c in $(docker ps -a --filter {label} --format '{{{{.Names}}}}'); do "
             f"[ \"$c\" = {name} ] || {{ docker stop -t {STOP_GRACE_SECONDS} \"$c\"; docker rm -f \"$c\"; }} "
             ">/dev/null 2>&1; done")
    run = plan.container.docker_run(image, labels=((SLOT_LABEL, slot),))
    # Idempotent create: a container of this name left by an interrupted run is replaced.
    return f"{docker_usable(plan.host.name)}; {stale}; docker rm -f {name} >/dev/null 2>&1; {run} >/dev/null && docker inspect -f '{{{{.Id}}}}' {name}"


def container_id_command(plan: HostPlan) -> str:
    return f"docker inspect -f '{{{{.Id}}}}' {q(plan.container.name)}"


def remove_container_command(plan: HostPlan) -> str:
    # SIGTERM first, so engines finish the requests in flight (a rolling update loses none of those).
    name = q(plan.container.name)
    return f"{docker_usable(plan.host.name)}; docker stop -t {STOP_GRACE_SECONDS} {name} >/dev/null 2>&1; docker rm -f {name} >/dev/null 2>&1; true"


def http_code(url: str) -> str:
    """Shell command printing the HTTP status `url` answers with ("000": no answer)."""
    return f"curl -s -o /dev/null -m 5 -w '%{{http_code}}' {q(url)}"


def readiness_script(plan: HostPlan, timeout: int, interval: int) -> str:
    """Waits until the container runs and every health port answers; on failure says why, with logs."""
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
        f"echo \"pdstack: host {host}: {plan.container.name} ready\"",
    ]
    return "\n".join(lines) + "\n"
