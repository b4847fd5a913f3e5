#!/usr/bin/python3
"""OCI runtime for the testbed's dockerd: runc, minus the capabilities this machine cannot grant.

Sandboxed machines run with a capability bounding set that lacks some capabilities (seen here:
CAP_SYS_RESOURCE). `docker run --privileged`, which the reference deployment uses, asks runc for every
capability and then fails with "unable to apply caps: operation not permitted". This wrapper removes
from the container's config.json only the capabilities outside our own bounding set, then runs runc,
so deployments keep rendering the real `--privileged` flag. Every other call goes to runc untouched.
"""
import json
import os
import sys

RUNC = "/usr/sbin/runc"
CAP_NAMES = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
             "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
             "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
             "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
             "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
             "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"]


def bounding_set() -> set[str]:
    with open("/proc/self/status") as f:
        mask = int(next(line for line in f if line.startswith("CapBnd:")).split()[1], 16)
    return {f"CAP_{name}" for bit, name in enumerate(CAP_NAMES) if mask >> bit & 1}


def strip_caps(bundle: str) -> None:
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        spec = json.load(f)
    caps = spec.get("process", {}).get("capabilities")
    if not caps:
        return
    allowed = bounding_set()
    known = {f"CAP_{name}" for name in CAP_NAMES}
    changed = False
    for kind, names in caps.items():
        kept = [c for c in names if c in allowed or c not in known]
        if kept != names:
            caps[kind] = kept
            changed = True
    if changed:
        with open(path, "w") as f:
            json.dump(spec, f)


def main(argv: list[str]) -> None:
    if "create" in argv or "run" in argv:
        for i, arg in enumerate(argv):
            if arg in ("--bundle", "-b") and i + 1 < len(argv):
                strip_caps(argv[i + 1])
            elif arg.startswith("--bundle="):
                strip_caps(arg.split("=", 1)[1])
    os.execv(RUNC, [RUNC] + argv)


if __name__ == "__main__":
    main(sys.argv[1:])
