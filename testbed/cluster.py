"""The whole testbed: bridge, firewall rule, registry, keys, and the hosts on it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import fakeascend, host as hostmod
from .layout import (BRIDGE, CLIENT_KEY, GATEWAY, HOSTS_DIR, KEYS_DIR, KNOWN_HOSTS, MAX_DEVICES, NS_DIR, REGISTRY,
                     REGISTRY_CACHE, STATE_DIR, STATE_FILE, HostLayout, host)
from .system import TestbedError, alive, read_pid, run, stop_pid, succeeds, wait_for

REQUIRED_COMMANDS = ["ip", "iptables", "nsenter", "unshare", "mountpoint", "dockerd", "docker",
                     "/usr/sbin/sshd", "ssh-keygen", "docker-registry"]
FORWARD_RULE = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]
REGISTRY_PID = STATE_DIR / "registry.pid"


def load_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {"hosts": [], "devices": 0, "placeholders": []}


def save_state(state: dict) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")


def hosts_in(state: dict) -> list[HostLayout]:
    return [host(i) for i in state["hosts"]]


def up(count: int, devices: int) -> list[HostLayout]:
    if os.geteuid() != 0:
        raise TestbedError("the testbed makes namespaces and mounts: run it as root")
    if not 1 <= devices <= MAX_DEVICES:
        raise TestbedError(f"--devices must be 1..{MAX_DEVICES}, got {devices}")
    missing = [c for c in REQUIRED_COMMANDS if not shutil.which(c)]
    if missing:
        raise TestbedError(f"missing commands {missing}: run 'make setup' first")
    state = load_state()
    if state["hosts"] and state["devices"] != devices:
        raise TestbedError(f"the testbed is up with {state['devices']} devices per host; "
                           f"run 'testbed down' before changing --devices")
    wanted = [host(i) for i in range(1, count + 1)]
    for extra in [h for h in hosts_in(state) if h.index > count]:
        hostmod.destroy(extra)
    state["hosts"] = [h.index for h in wanted]
    state["devices"] = devices
    # Which testbed this is: `down` forgets it, so a stack deployed on an earlier testbed can tell that
    # the files and containers it records are gone (scripts/demo.sh uses it).
    state.setdefault("instance", uuid.uuid4().hex)
    # Record what we are about to create before creating it, so an interrupted `up` is still undone
    # by `down`.
    state["placeholders"] = sorted(set(state.get("placeholders", [])) | set(_missing_placeholders(devices)))
    save_state(state)

    _ensure_keys(wanted)
    _ensure_bridge()
    _ensure_ns_dir()
    _make_placeholders(state["placeholders"])
    _ensure_registry()
    hostmod.install_runtime()
    for h in wanted:
        h.dir.mkdir(parents=True, exist_ok=True)
        fakeascend.write_host_root(h, devices, wanted)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(_bring_up, wanted))
    return wanted


def _member(name: str) -> HostLayout:
    state = load_state()
    for h in hosts_in(state):
        if h.name == name:
            return h
    raise TestbedError(f"{name} is not a testbed host (hosts: {', '.join(h.name for h in hosts_in(state)) or 'none'})")


def stop_service(name: str, service: str) -> None:
    """A broken host on purpose: its sshd (unreachable) or its dockerd (docker down) stops."""
    h = _member(name)
    stop_pid(read_pid({"sshd": h.sshd_pid, "dockerd": h.dockerd_pid}[service]))


def start_host(name: str) -> None:
    """Restarts whatever of a host's sshd and dockerd is not running."""
    h = _member(name)
    hostmod.ensure_sshd(h)
    hostmod.ensure_dockerd(h)
    hostmod.wait_ready(h)


def _bring_up(h: HostLayout) -> None:
    hostmod.ensure_network(h)
    hostmod.ensure_namespaces(h)
    hostmod.ensure_sshd(h)
    hostmod.ensure_dockerd(h)
    hostmod.wait_ready(h)


def down() -> None:
    state = load_state()
    indices = set(state["hosts"])
    if HOSTS_DIR.exists():  # hosts of an interrupted `up` that never reached the state file
        indices |= {int(p.name[4:]) for p in HOSTS_DIR.iterdir() if p.name.startswith("host") and p.name[4:].isdigit()}
    if NS_DIR.exists():
        indices |= {int(p.name[4:].split(".")[0]) for p in NS_DIR.iterdir()
                    if p.name.startswith("host") and p.name[4:].split(".")[0].isdigit()}
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(hostmod.destroy, [host(i) for i in sorted(indices)]))
    stop_pid(read_pid(REGISTRY_PID))
    REGISTRY_PID.unlink(missing_ok=True)
    while succeeds(["iptables", "-C", *FORWARD_RULE]):
        run(["iptables", "-D", *FORWARD_RULE])
    if succeeds(["ip", "link", "show", BRIDGE]):
        run(["ip", "link", "del", BRIDGE])
    if NS_DIR.exists():
        if succeeds(["mountpoint", "-q", str(NS_DIR)]):
            run(["umount", str(NS_DIR)], check=False)
        shutil.rmtree(NS_DIR.parent, ignore_errors=True)
    _remove_placeholders(state.get("placeholders", []))
    shutil.rmtree(HOSTS_DIR, ignore_errors=True)
    for name in ("registry.yml", "registry.log", hostmod.RUNC_BOUNDED.name):
        (STATE_DIR / name).unlink(missing_ok=True)
    STATE_FILE.unlink(missing_ok=True)


def leftovers() -> list[str]:
    """What `down` must have removed; an empty list means the machine is clean."""
    found = []
    netns = run(["ip", "netns", "list"], check=False).stdout
    found += [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith("pdtb-")]
    if succeeds(["ip", "link", "show", BRIDGE]):
        found.append(f"bridge {BRIDGE}")
    links = run(["ip", "-o", "link", "show"], check=False).stdout
    found += [f"link {line.split(':')[1].strip().split('@')[0]}" for line in links.splitlines()
              if line.split(":")[1].strip().startswith("pdtbh")]
    if succeeds(["iptables", "-C", *FORWARD_RULE]):
        found.append("iptables FORWARD rule for " + BRIDGE)
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line.split()[4]}" for line in mounts.splitlines() if "pdstack-testbed" in line.split()[4]]
    if alive(read_pid(REGISTRY_PID)):
        found.append("registry process")
    found += [f"placeholder {p}" for p in load_state().get("placeholders", []) if os.path.lexists(p)]
    return found


def _ensure_keys(hosts: list[HostLayout]) -> None:
    KEYS_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(KEYS_DIR, 0o700)
    if not CLIENT_KEY.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pdstack-testbed", "-f", str(CLIENT_KEY)])
    (KEYS_DIR / "authorized_keys").write_text(Path(f"{CLIENT_KEY}.pub").read_text())
    for h in hosts:
        if not h.host_key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", str(h.host_key)])
    # What a stack pins (pdstack:ssh.knownHostsFile): every host the testbed has now.
    KNOWN_HOSTS.write_text("".join(f"{h.address} {h.public_key()}\n" for h in hosts))


def _ensure_bridge() -> None:
    if not succeeds(["ip", "link", "show", BRIDGE]):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    if GATEWAY not in run(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE]).stdout:
        run(["ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    # dockerd sets the FORWARD policy to DROP and br_netfilter sends bridged frames through it.
    if not succeeds(["iptables", "-C", *FORWARD_RULE]):
        run(["iptables", "-I", *FORWARD_RULE])


def _ensure_ns_dir() -> None:
    NS_DIR.mkdir(parents=True, exist_ok=True)
    if not succeeds(["mountpoint", "-q", str(NS_DIR)]):
        run(["mount", "--bind", str(NS_DIR), str(NS_DIR)])
    run(["mount", "--make-private", str(NS_DIR)])


def _missing_placeholders(devices: int) -> list[str]:
    """Mount points that bind mounts need but the machine lacks (they are made empty, then removed)."""
    paths = [p for p, _ in fakeascend.HOST_PATHS] + fakeascend.device_nodes(devices)
    return [p for p in paths if not os.path.lexists(p)]


def _make_placeholders(paths: list[str]) -> None:
    kinds = dict(fakeascend.HOST_PATHS)
    for p in paths:
        if os.path.lexists(p):
            continue
        if p.startswith("/dev/"):
            run(["mknod", "-m", "0666", p, "c", "1", "3"])
        elif kinds.get(p) == "dir":
            os.makedirs(p)
        else:
            Path(p).parent.mkdir(parents=True, exist_ok=True)
            Path(p).touch()


def _remove_placeholders(paths: list[str]) -> None:
    for p in sorted(paths, reverse=True):
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                os.rmdir(p)  # only if still empty: never delete something a user put there
            elif os.path.lexists(p):
                if p.startswith("/dev/") or os.path.getsize(p) == 0:
                    os.unlink(p)
        except OSError:
            pass


def _ensure_registry() -> None:
    if alive(read_pid(REGISTRY_PID)) and _registry_answers():
        return
    REGISTRY_CACHE.mkdir(parents=True, exist_ok=True)
    conf = STATE_DIR / "registry.yml"
    conf.write_text("\n".join([
        "version: 0.1", "log:", "  level: warn", "storage:", "  filesystem:",
        f"    rootdirectory: {REGISTRY_CACHE}", "  delete:", "    enabled: true",
        "http:", f"  addr: {REGISTRY}", ""]))
    log = open(STATE_DIR / "registry.log", "ab")
    proc = subprocess.Popen(["docker-registry", "serve", str(conf)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    REGISTRY_PID.write_text(f"{proc.pid}\n")
    wait_for(_registry_answers, timeout=30, what=f"the testbed registry on {REGISTRY} (log: {STATE_DIR / 'registry.log'})")


def _registry_answers() -> bool:
    try:
        # No proxy: the registry is on the testbed bridge, and only there may traffic go.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{REGISTRY}/v2/", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False
