"""`python -m testbed up|down|hosts|status|instance|exec|leftovers`: a simulated Ascend cluster on this machine."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import cluster, host as hostmod
from .layout import CLIENT_KEY, DEFAULT_DEVICES, DEFAULT_HOSTS, REGISTRY, host
from .system import TestbedError


def hosts_json() -> list[dict]:
    state = cluster.load_state()
    return [{
        "name": h.name,
        "address": h.address,
        "port": 22,
        "user": "root",
        "privateKeyPath": str(CLIENT_KEY),
        "hostPublicKey": h.public_key(),
        "devices": state["devices"],
        "deviceAddresses": [h.device_address(d) for d in range(state["devices"])],
    } for h in cluster.hosts_in(state)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="create (or repair) hosts host1..hostN; idempotent")
    p_up.add_argument("--hosts", type=int, default=DEFAULT_HOSTS)
    p_up.add_argument("--devices", type=int, default=DEFAULT_DEVICES, help="simulated NPUs per host")
    sub.add_parser("down", help="remove every namespace, process, mount, link and rule the testbed made")
    p_hosts = sub.add_parser("hosts", help="print the hosts and how to reach them")
    p_hosts.add_argument("--json", action="store_true")
    sub.add_parser("status", help="what is running")
    sub.add_parser("instance", help="print this testbed's id, new at every `up` after a `down` (exit 1 if down)")
    p_exec = sub.add_parser("exec", help="run a command inside a host's namespaces (as its sshd would)")
    p_exec.add_argument("host")
    p_exec.add_argument("command", nargs=argparse.REMAINDER)
    p_stop = sub.add_parser("stop", help="stop a host's sshd or dockerd, to try failures; `start` undoes it")
    p_stop.add_argument("host")
    p_stop.add_argument("service", choices=["sshd", "dockerd"])
    p_start = sub.add_parser("start", help="restart a host's stopped sshd and dockerd")
    p_start.add_argument("host")
    sub.add_parser("leftovers", help="list anything of the testbed still on the machine (exit 1 if any)")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "up":
            hosts = cluster.up(args.hosts, args.devices)
            print(f"testbed up: {len(hosts)} hosts ({hosts[0].address}..{hosts[-1].address}), "
                  f"{args.devices} devices each, registry {REGISTRY}, key {CLIENT_KEY}")
        elif args.cmd == "down":
            cluster.down()
            # The kernel finishes some tear-down (namespaces, links) asynchronously: give it a moment.
            deadline = time.monotonic() + 10
            while (rest := cluster.leftovers()) and time.monotonic() < deadline:
                time.sleep(0.5)
            if rest:
                print("testbed down: still present: " + ", ".join(rest), file=sys.stderr)
                return 1
            print("testbed down: nothing left")
        elif args.cmd == "hosts":
            data = hosts_json()
            if args.json:
                print(json.dumps(data, indent=2))
            else:
                for h in data:
                    print(f"{h['name']:8} {h['address']:15} ssh -i {h['privateKeyPath']} root@{h['address']}")
        elif args.cmd == "instance":
            instance = cluster.load_state().get("instance")
            if not instance:
                print("testbed: down", file=sys.stderr)
                return 1
            print(instance)
        elif args.cmd == "status":
            state = cluster.load_state()
            if not state["hosts"]:
                print("testbed: down")
                return 0
            print(f"{'host':8} {'address':15} {'netns':6} {'sshd':5} {'dockerd':8} containers")
            bad = False
            for h in cluster.hosts_in(state):
                s = hostmod.status(h)
                bad |= not (s["netns"] and s["sshd"] and s["dockerd"])
                ctrs = "-" if s["containers"] is None else (", ".join(s["containers"]) or "none")
                print(f"{s['name']:8} {s['address']:15} {_yes(s['netns']):6} {_yes(s['sshd']):5} "
                      f"{_yes(s['dockerd']):8} {ctrs}")
            return 1 if bad else 0
        elif args.cmd == "exec":
            index = int(args.host.removeprefix("host")) if args.host.removeprefix("host").isdigit() else 0
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            os.execvp("nsenter", hostmod.enter(host(index)) + (command or ["bash"]))
        elif args.cmd == "stop":
            cluster.stop_service(args.host, args.service)
            print(f"testbed: {args.service} of {args.host} stopped ('python -m testbed start {args.host}' restarts it)")
        elif args.cmd == "start":
            cluster.start_host(args.host)
            print(f"testbed: {args.host} is up")
        elif args.cmd == "leftovers":
            rest = cluster.leftovers()
            print("\n".join(rest) if rest else "nothing left")
            return 1 if rest else 0
    except TestbedError as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 1
    return 0


def _yes(flag: bool) -> str:
    return "up" if flag else "DOWN"


if __name__ == "__main__":
    sys.exit(main())
