"""One simulated host: network + mount + UTS namespaces with their own sshd and dockerd."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from . import fakeascend
from .layout import BRIDGE, GATEWAY, KEYS_DIR, NS_DIR, REGISTRY, STATE_DIR, HostLayout
from .system import alive, read_pid, run, stop_pid, succeeds, wait_for

AUTHORIZED_KEYS = KEYS_DIR / "authorized_keys"
RUNC_BOUNDED_SOURCE = Path(__file__).resolve().parent / "runc_bounded.py"
# The hosts' dockerd runs it from inside the host's mount namespace, where the checkout may be hidden
# (a clone under /tmp is: every host has its own /tmp), so it is installed under the state dir.
RUNC_BOUNDED = STATE_DIR / "runc-bounded"


def enter(host: HostLayout) -> list[str]:
    """Command prefix that runs a program inside the host, as its sshd and dockerd do."""
    return ["nsenter", f"--net={host.netns_path}", f"--mount={host.mnt_ns}", f"--uts={host.uts_ns}", "--"]


def ensure_network(host: HostLayout) -> None:
    if not host.netns_path.exists():
        run(["ip", "netns", "add", host.netns])
    if not succeeds(["ip", "link", "show", host.veth]):
        run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
    run(["ip", "link", "set", host.veth, "master", BRIDGE, "up"])
    inside = ["ip", "netns", "exec", host.netns]  # fine for ip(8) itself; daemons use nsenter (see enter)
    run(inside + ["ip", "link", "set", "lo", "up"])
    run(inside + ["ip", "link", "set", "eth0", "up"])
    if host.address not in run(inside + ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout:
        run(inside + ["ip", "addr", "add", f"{host.address}/24", "dev", "eth0"])
    run(inside + ["ip", "route", "replace", "default", "via", GATEWAY])


def ensure_namespaces(host: HostLayout) -> None:
    NS_DIR.mkdir(parents=True, exist_ok=True)
    if not _is_ns_handle(host.uts_ns):
        host.uts_ns.touch()
        run(["unshare", f"--uts={host.uts_ns}", "hostname", host.name])
    if _is_ns_handle(host.mnt_ns):
        return
    host.mnt_ns.touch()
    run(["unshare", f"--mount={host.mnt_ns}", "--propagation", "private", "true"])
    # The new namespace starts as a copy of the machine's mounts, including the handles of the other
    # hosts' namespaces: detach those copies (they would keep the other namespaces alive after their
    # own `down`), then give the host its own /run and bind its files over the machine's paths.
    script = [
        "set -e",
        f"umount -R -l {NS_DIR.parent} 2>/dev/null || true",
        "umount -R -l /run/netns 2>/dev/null || true",
        "mount -t tmpfs -o mode=0755 tmpfs /run",
        "mkdir -p /run/sshd /run/lock",
    ]
    for path, kind in fakeascend.HOST_PATHS:
        source = host.root / path.lstrip("/")
        script.append(f"mount --bind {source} {path}")
    run(["nsenter", f"--mount={host.mnt_ns}", "--", "sh", "-c", "\n".join(script)])


def sshd_config(host: HostLayout) -> str:
    return "\n".join([
        f"ListenAddress {host.address}",
        "Port 22",
        f"HostKey {host.host_key}",
        f"PidFile {host.sshd_pid}",
        f"AuthorizedKeysFile {AUTHORIZED_KEYS}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # The key files live under the testbed's state dir, whose modes sshd would otherwise police.
        "StrictModes no",
        # Debian's default: a deployer must not rely on passing arbitrary environment over SSH.
        "AcceptEnv LANG LC_*",
        # A Pulumi run opens many sessions at once against one host.
        "MaxStartups 200:30:400",
        "MaxSessions 100",
        "PrintMotd no",
        # Every connection is logged ("Connection from ..."), so tests can tell that none was made.
        "LogLevel VERBOSE",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
        "",
    ])


def ensure_sshd(host: HostLayout) -> None:
    if alive(read_pid(host.sshd_pid)):
        return
    conf = host.dir / "sshd_config"
    conf.write_text(sshd_config(host))
    run(enter(host) + ["/usr/sbin/sshd", "-f", str(conf), "-E", str(host.dir / "sshd.log")])


def install_runtime() -> None:
    """Once per `up`, before any host's dockerd starts (they all exec this one file)."""
    tmp = RUNC_BOUNDED.with_suffix(".tmp")
    shutil.copyfile(RUNC_BOUNDED_SOURCE, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, RUNC_BOUNDED)


def ensure_dockerd(host: HostLayout) -> None:
    if alive(read_pid(host.dockerd_pid)):
        return
    log = open(host.dir / "dockerd.log", "ab")
    subprocess.Popen(
        enter(host) + [
            "dockerd", "--pidfile", str(host.dockerd_pid), "-H", "unix:///run/docker.sock",
            "--exec-root", "/run/docker", "--data-root", "/var/lib/docker",
            # Containers use the host network only (as the reference deployment does); the host's
            # dockerd must not touch the machine's firewall or make bridges of its own.
            "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
            "--insecure-registry", REGISTRY, "--log-level", "warn",
            # See runc_bounded.py: lets `--privileged` containers start inside this sandbox.
            "--add-runtime", f"runc-bounded={RUNC_BOUNDED}", "--default-runtime", "runc-bounded",
        ],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()


def wait_ready(host: HostLayout, timeout: float = 90) -> None:
    wait_for(lambda: _port_open(host.address, 22), timeout=timeout, what=f"sshd of {host.name} on {host.address}:22")
    wait_for(lambda: succeeds(enter(host) + ["docker", "info"]), timeout=timeout,
             what=f"dockerd of {host.name} (log: {host.dir / 'dockerd.log'})")


def status(host: HostLayout) -> dict:
    docker_ok = alive(read_pid(host.dockerd_pid))
    containers = None
    if docker_ok and _is_ns_handle(host.mnt_ns):
        out = run(enter(host) + ["docker", "ps", "-a", "--format", "{{.Names}} {{.State}}"], check=False)
        containers = [line for line in out.stdout.splitlines() if line] if out.returncode == 0 else None
    return {
        "name": host.name, "address": host.address,
        "netns": host.netns_path.exists(),
        "sshd": alive(read_pid(host.sshd_pid)) and _port_open(host.address, 22),
        "dockerd": docker_ok,
        "containers": containers,
    }


def destroy(host: HostLayout) -> None:
    dockerd = read_pid(host.dockerd_pid)
    containerd = None
    if alive(dockerd) and _is_ns_handle(host.mnt_ns):
        ids = run(enter(host) + ["docker", "ps", "-aq"], check=False).stdout.split()
        if ids:
            run(enter(host) + ["docker", "rm", "-f", *ids], check=False, timeout=120)
        out = run(enter(host) + ["cat", "/run/docker/containerd/containerd.pid"], check=False)
        containerd = int(out.stdout) if out.stdout.strip().isdigit() else None
    stop_pid(dockerd)
    stop_pid(containerd)
    stop_pid(read_pid(host.sshd_pid))
    # Whatever still runs inside the host's namespaces (open SSH sessions, container shims) is ours:
    # find it by namespace identity, never by process name.
    for pid in _pids_in(host):
        stop_pid(pid, grace=5)
    for handle in (host.mnt_ns, host.uts_ns):
        if _is_ns_handle(handle):
            run(["umount", str(handle)], check=False)
        handle.unlink(missing_ok=True)
    # The veth first: deleting the namespace would also remove it, but asynchronously, so it could
    # still be listed right after `down`.
    run(["ip", "link", "del", host.veth], check=False)
    if host.netns_path.exists():
        run(["ip", "netns", "del", host.netns], check=False)
    if host.dir.exists():
        run(["rm", "-rf", "--one-file-system", str(host.dir)], check=False)


def _pids_in(host: HostLayout) -> list[int]:
    inodes = set()
    for handle in (host.netns_path, host.mnt_ns):
        try:
            if _is_ns_handle(handle):
                inodes.add(os.stat(handle).st_ino)
        except OSError:
            pass
    if not inodes:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for kind in ("net", "mnt"):
            try:
                if os.stat(entry / "ns" / kind).st_ino in inodes:
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    return found


def _is_ns_handle(path: Path) -> bool:
    return path.exists() and succeeds(["mountpoint", "-q", str(path)])


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False
