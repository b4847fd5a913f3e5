"""Shared pieces: the benchmark layout as a stack config, SSH to testbed hosts, timing and statistics."""
from __future__ import annotations

import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "10.77.0.1:5000/pdstack/simulator:0.1.0"
KEY = "/var/lib/pdstack-testbed/keys/id_ed25519"
KNOWN_HOSTS = "/var/lib/pdstack-testbed/keys/known_hosts"
HOSTS_DIR = Path("/var/lib/pdstack-testbed/hosts")
DEVICES = 2  # per host: few, so 33 hosts of simulated engines stay light on a 2-core machine
STARTUP_DELAY = 2  # PDSIM_STARTUP_DELAY, seconds of simulated model loading: the simulator's default
READINESS_TIMEOUT = 300


def address(i: int) -> str:
    return f"10.77.0.{10 + i}"


def layout(n: int) -> dict:
    """Host names per role for an n-host cluster (n odd, >= 9): half of the n-1 engine hosts run 2-host
    prefill instances (Ray), the rest one multi-host decode instance plus a one-host decode instance (the
    host the one-host change edits), and the last host runs the proxy."""
    m = n - 1
    half = m // 2
    engines = [f"host{i}" for i in range(1, m + 1)]
    prefill = [engines[i:i + 2] for i in range(0, half, 2)]
    return {"prefill": prefill, "decode": [engines[half:m - 1], engines[m - 1:]], "proxy": f"host{n}"}


def describe_layout(n: int) -> str:
    lay = layout(n)
    return (f"{n} hosts x {DEVICES} devices: {len(lay['prefill'])} prefill instances of 2 hosts (TP {2 * DEVICES}, Ray), "
            f"decode-0 on {len(lay['decode'][0])} hosts (DP {len(lay['decode'][0]) * DEVICES}), decode-1 on 1 host "
            f"(DP {DEVICES}), proxy on {lay['proxy']}; one container per host; PDSIM_STARTUP_DELAY={STARTUP_DELAY} s")


def stack_config(n: int, decode1_max_num_seqs: int = 4) -> dict:
    """The pdstack stack config (as `pulumi config` keys) of the benchmark layout."""
    lay = layout(n)
    engine = {"env": {"PDSIM_STARTUP_DELAY": str(STARTUP_DELAY)}}
    devices = f"0-{DEVICES - 1}"
    return {
        "pdstack:image": IMAGE,
        "pdstack:ssh": {"user": "root", "privateKeyPath": KEY, "knownHostsFile": KNOWN_HOSTS},
        "pdstack:hosts": {f"host{i}": {"address": address(i)} for i in range(1, n + 1)},
        "pdstack:prefill": [{"name": f"prefill-{k}", "hosts": hosts, "devices": devices, "engine": engine}
                            for k, hosts in enumerate(lay["prefill"])],
        "pdstack:decode": [
            {"name": "decode-0", "hosts": lay["decode"][0], "devices": devices, "engine": engine},
            {"name": "decode-1", "hosts": lay["decode"][1], "devices": devices,
             "engine": dict(engine, maxNumSeqs=decode1_max_num_seqs)},
        ],
        "pdstack:proxy": {"host": lay["proxy"], "port": 7000},
        "pdstack:readiness": {"timeoutSeconds": READINESS_TIMEOUT},
    }


def cluster_spec(config: dict):
    """The ClusterSpec pdstack's program would build from `config` (same parser, same key pins)."""
    from pdstack.config.known_hosts import pin_host_keys
    from pdstack.config.parse import check_local_files, parse_cluster
    spec = parse_cluster(config)
    check_local_files(spec)
    return pin_host_keys(spec)


def ssh_base(addr: str, control: str | None = None) -> list[str]:
    args = ["ssh", "-i", KEY, "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={KNOWN_HOSTS}",
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=error"]
    if control:
        args += ["-o", f"ControlPath={control}"]
    return args + [f"root@{addr}"]


def ssh(addr: str, command: str, stdin: str | None = None, control: str | None = None, timeout: float = 600,
        check: bool = True) -> str:
    proc = subprocess.run(ssh_base(addr, control) + [command], input=stdin, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ssh {addr} {command[:80]!r} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def on_all(n: int, command: str, check: bool = True) -> None:
    with ThreadPoolExecutor(max_workers=n) as pool:
        list(pool.map(lambda i: ssh(address(i), command, check=check), range(1, n + 1)))


# Everything any method leaves on a host: containers (pdstack labels its own; Ansible's carry the same
# docker run flags), launch scripts, ranktables, logs. The image stays, so every method finds it pulled.
CLEAN = ("ids=$(docker ps -aq --filter label=io.pdstack.managed=true); [ -z \"$ids\" ] || docker rm -f $ids >/dev/null; "
         "rm -rf /tmp/scripts_path /tmp/ranktable_save_path /data/log_path; true")


def clean_hosts(n: int) -> None:
    on_all(n, CLEAN)


def accepted_ssh(n: int) -> int:
    """SSH logins the testbed's sshds have accepted so far (each is one TCP connection + handshake)."""
    total = 0
    for i in range(1, n + 1):
        log = HOSTS_DIR / f"host{i}" / "sshd.log"
        try:
            total += log.read_text(errors="replace").count("Accepted publickey")
        except FileNotFoundError:
            pass
    return total


def tree_usage(root_pid: int) -> dict[int, tuple[str, int, float]]:
    """root_pid and all its descendants: pid -> (command name, resident bytes, CPU seconds so far)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stats[int(entry)] = f.read()
        except OSError:
            continue
        ppid = int(stats[int(entry)].rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out = {}
    todo = [root_pid]
    page, tick = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        stat = stats.get(pid)
        if stat is None:
            continue
        name, rest = stat[stat.find("(") + 1:].rsplit(")", 1)
        fields = rest.split()  # fields[0] is the state, the 3rd field of /proc/<pid>/stat
        utime, stime, rss_pages = int(fields[11]), int(fields[12]), int(fields[21])
        out[pid] = (name, rss_pages * page, (utime + stime) / tick)
    return out


def machine_cpu() -> float:
    """CPU seconds this machine has spent busy since boot, all cores: user, nice, system, irq, softirq,
    steal (not idle, not iowait). The testbed's hosts share it with the deployer, so a deployer's own CPU
    slows the hosts it deploys to: the difference between two readings says how loaded the run was."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_measured(argv: list[str], *, cwd=None, env=None, timeout: float = 1800, sample: bool = False,
                 lines: bool = False) -> dict:
    """Runs argv; wall time, exit code, output (each line with when it arrived), the busy CPU seconds of
    the whole machine meanwhile, and (sample=True, every 0.2 s) the peak RSS of its process tree and the
    CPU seconds each of its processes used (as last sampled: a process's last 0.2 s may be missed)."""
    import threading
    machine0 = machine_cpu()
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, peak_per = 0, {}
    cpu_by_pid: dict[int, tuple[str, float]] = {}
    timed: list[tuple[float, str]] = []

    def read():
        for line in proc.stdout:
            timed.append((time.monotonic() - started, line.rstrip("\n")))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        if sample:
            usage = tree_usage(proc.pid)
            total = sum(rss for _, rss, _ in usage.values())
            if total > peak:
                peak, peak_per = total, {}
                for name, rss, _ in usage.values():
                    peak_per[name] = peak_per.get(name, 0) + rss
            cpu_by_pid.update({pid: (name, cpu) for pid, (name, _, cpu) in usage.items()})
        if time.monotonic() - started > timeout:
            proc.kill()
        time.sleep(0.2 if sample else 0.05)
    wall = time.monotonic() - started
    machine = machine_cpu() - machine0
    reader.join()
    cpu_by: dict[str, float] = {}
    for name, cpu in cpu_by_pid.values():
        cpu_by[name] = cpu_by.get(name, 0) + cpu
    return {"wall": wall, "rc": proc.returncode, "out": "\n".join(l for _, l in timed), "lines": timed,
            "machine_cpu": machine, "cpu": sum(cpu_by.values()), "cpu_by": cpu_by,
            "peak_rss": peak, "peak_rss_by": peak_per}


def stats(values: list[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    return statistics.median(values), min(values), max(values)
