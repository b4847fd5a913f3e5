"""One benchmark size: every method on an n-host testbed that is already up (bench.sh brings it up and
down under the testbed lock). Writes <out>/<n>.json with every repetition."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pdstack import image_resolve

from . import ansible_gen, critical
from .common import (IMAGE, ROOT, accepted_ssh, address, clean_hosts, describe_layout, layout, machine_cpu, on_all,
                     run_measured, stack_config)

STACK = "bench"
BENCH_VENV = Path(os.environ.get("PDSTACK_BENCH_VENV", Path.home() / ".cache/pdstack/bench-venv"))

# Lines the CLI prints as resources progress (--non-interactive): "<op> <type> <name> <state> (<secs>s)".
PROGRESS = re.compile(r"^\s*\S+\s+(\S+:\S+:\S+)\s+(\S+)\s+(creating|created|updating|updated|deleting|deleted|"
                      r"replacing|replaced|creating replacement|created replacement|deleting original|deleted original)\b")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Pulumi:
    """The CLI on a scratch backend and a scratch project dir whose program is this repository."""

    def __init__(self, work: Path, parallel: int):
        self.project = work / "project"
        self.state = work / "state"
        self.parallel = parallel
        shutil.rmtree(self.project, ignore_errors=True)
        self.project.mkdir(parents=True)
        self.state.mkdir(parents=True, exist_ok=True)
        (self.project / "Pulumi.yaml").write_text(yaml.safe_dump({
            "name": "pdstack",
            "runtime": {"name": "python", "options": {"toolchain": "pip", "virtualenv": str(ROOT / ".venv")}},
            "main": os.path.relpath(ROOT, self.project)}, sort_keys=False))
        self.env = dict(os.environ, PULUMI_BACKEND_URL=f"file://{self.state}", PULUMI_CONFIG_PASSPHRASE="pdstack-bench")

    def cmd(self, *args) -> list[str]:
        return [str(ROOT / "bin/pulumi"), "--non-interactive", *args]

    def run(self, *args, check=True):
        proc = subprocess.run(self.cmd(*args), cwd=self.project, env=self.env, capture_output=True, text=True)
        if check and proc.returncode:
            raise RuntimeError(f"pulumi {' '.join(args)}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def fresh_stack(self, config: dict) -> None:
        self.run("stack", "rm", "--yes", "--force", STACK, check=False)
        self.set_config(config)
        self.run("stack", "init", STACK)

    def set_config(self, config: dict) -> None:
        path = self.project / f"Pulumi.{STACK}.yaml"
        old = yaml.safe_load(path.read_text()) if path.exists() else {}
        doc = {"config": config}
        if old and "encryptionsalt" in old:
            doc["encryptionsalt"] = old["encryptionsalt"]
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def measured(self, *args, n: int, env: dict | None = None) -> dict:
        before = accepted_ssh(n)
        r = run_measured(self.cmd(*args), cwd=self.project, env=dict(self.env, **(env or {})), sample=True, lines=True)
        r["ssh"] = accepted_ssh(n) - before
        if r["rc"]:
            raise RuntimeError(f"pulumi {' '.join(args)} failed ({r['rc']}):\n{r['out'][-5000:]}")
        return r


def measures(r: dict, *keys: str) -> dict:
    """What a run's record keeps of run_measured's result: time, SSH, CPU and memory, plus `keys`."""
    return {k: r[k] for k in ("wall", "ssh", "machine_cpu", "cpu", "cpu_by", "peak_rss", "peak_rss_by", *keys) if k in r}


def pulumi_phases(lines: list[tuple[float, str]]) -> dict:
    """When the CLI reported each kind of step done (seconds from start): where a run's time goes."""
    first = None
    done: dict[str, float] = {}
    for t, line in lines:
        m = PROGRESS.match(line)
        if not m:
            continue
        _, name, state = m.groups()
        first = t if first is None else first
        if state.startswith(("created", "updated", "replaced")):
            kind = name.rsplit("-", 1)[-1]
            if name.startswith("proxy-"):
                kind = "proxy-" + kind
            done[kind] = max(done.get(kind, 0), t)
    return {"first-step": first, **{f"last-{k}": v for k, v in sorted(done.items(), key=lambda kv: kv[1])}}


def critical_phases(steps) -> dict:
    done: dict[str, float] = {}
    for host, step, start, end in steps:
        done[step] = max(done.get(step, 0), end)
    return {f"last-{k}": v for k, v in sorted(done.items(), key=lambda kv: kv[1])}


def ansible_phases(lines: list[tuple[float, str]], wall: float) -> dict:
    """Seconds per task (the time from its TASK banner to the next one): where Ansible's time goes."""
    marks = [(t, m.group(1)) for t, l in lines if (m := re.match(r"^TASK \[(.*?)\]", l))]
    out: dict[str, float] = {}
    for (t, name), nxt in zip(marks, marks[1:] + [(wall, None)]):
        out[name] = out.get(name, 0) + nxt[0] - t
    return out


def ansible_run(n: int, work: Path, playbook: str, config: dict, forks: int, pipelining: bool) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    ansible_gen.write_inventory(config, work, forks=forks, pipelining=pipelining)
    env = dict(os.environ, ANSIBLE_CONFIG=str(work / "ansible.cfg"), ANSIBLE_HOME=str(work / "home"),
               ANSIBLE_NOCOLOR="1", PATH=f"{BENCH_VENV}/bin:{os.environ['PATH']}")
    argv = [str(BENCH_VENV / "bin/ansible-playbook"), str(ROOT / "bench/ansible" / playbook),
            "-e", f"workdir={work}", "-e", f"repo={ROOT}", "-e", f"python={ROOT / '.venv/bin/python'}"]
    before = accepted_ssh(n)
    r = run_measured(argv, cwd=work, env=dict(env, PYTHONUNBUFFERED="1"), sample=True, lines=True)
    r["ssh"] = accepted_ssh(n) - before
    r["phases"] = ansible_phases(r["lines"], r["wall"])
    if r["rc"]:
        raise RuntimeError(f"ansible-playbook {playbook} failed ({r['rc']}):\n{r['out'][-6000:]}")
    return r


def pull_everywhere(n: int) -> None:
    """The image on every host, so every method finds it there (its pull is an inspect): bench.sh pulls
    it on every host before measuring anything."""
    on_all(n, "docker pull -q " + image_resolve.resolve(IMAGE)[0] + " >/dev/null")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, required=True)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, help="where <hosts>.json goes (required unless --pull-only)")
    parser.add_argument("--work", type=Path, help="scratch dir: stacks, inventories (required unless --pull-only)")
    parser.add_argument("--parallel", type=int, default=0, help="pulumi --parallel (0: 4 x hosts)")
    parser.add_argument("--slow-reps", type=int, default=0,
                        help="repetitions of the Ansible (a) runs, minutes each (0: --reps)")
    parser.add_argument("--skip", default="", help="comma-separated methods to leave out")
    parser.add_argument("--only", default="", help="comma-separated methods to run (default: all)")
    parser.add_argument("--pull-only", action="store_true", help="only pull the image on every host, and exit")
    args = parser.parse_args()
    if args.pull_only:
        pull_everywhere(args.hosts)
        return 0
    if args.out is None or args.work is None:
        parser.error("--out and --work are required")
    n, reps = args.hosts, args.reps
    parallel = args.parallel or 4 * n
    only = set(filter(None, args.only.split(",")))
    skip = set(filter(None, args.skip.split(",")))
    want = lambda m: (not only or m in only) and m not in skip  # noqa: E731
    slow_reps = args.slow_reps or reps
    lay = layout(n)
    change_host = lay["decode"][1][0]
    results: dict = {"hosts": n, "reps": reps, "slow_reps": slow_reps, "parallel": parallel, "layout": describe_layout(n),
                     "change_host": change_host, "runs": {}}
    args.out.mkdir(parents=True, exist_ok=True)

    def record(method: str, run: dict) -> None:
        results["runs"].setdefault(method, []).append(run)
        (args.out / f"{n}.json").write_text(json.dumps(results, indent=1))
        log(f"{n} hosts, {method}: {run['wall']:.1f} s" + (f", {run['ssh']} ssh" if "ssh" in run else ""))

    config = stack_config(n)
    log(f"layout: {results['layout']}; pulumi --parallel {parallel}")

    pull_everywhere(n)

    if want("critical"):
        for _ in range(reps):
            clean_hosts(n)
            before, cpu = accepted_ssh(n), machine_cpu()
            r = critical.critical_path(config)
            record("critical", {"wall": r["wall"], "ssh": accepted_ssh(n) - before, "machine_cpu": machine_cpu() - cpu,
                                "phases": critical_phases(r["steps"])})
    if want("critical-one-host"):
        # On a cluster the critical path deployed; each run changes the engine setting again.
        if not want("critical"):
            clean_hosts(n)
            critical.critical_path(config)
        addresses = critical.read_addresses(config)  # pdstack has them in its state
        for i in range(reps):
            before, cpu = accepted_ssh(n), machine_cpu()
            r = critical.one_host(stack_config(n, decode1_max_num_seqs=5 + i), change_host, addresses)
            record("critical-one-host", {"wall": r["wall"], "ssh": accepted_ssh(n) - before,
                                         "machine_cpu": machine_cpu() - cpu, "phases": critical_phases(r["steps"])})

    if want("ansible-fast"):
        for _ in range(reps):
            clean_hosts(n)
            record("ansible-fast", measures(ansible_run(n, args.work / "ansible-fast", "fast.yml", config,
                                                        forks=n, pipelining=True), "phases"))
    if want("ansible-reference"):
        for _ in range(slow_reps):
            clean_hosts(n)
            record("ansible-reference", measures(ansible_run(
                n, args.work / "ansible-reference", "reference.yml", config, forks=5, pipelining=False), "phases"))
    if want("ansible-reference-one-host"):
        # The reference has no per-host update: the same change means a full run on the deployed cluster.
        for i in range(slow_reps):
            record("ansible-reference-one-host", measures(ansible_run(
                n, args.work / "ansible-reference", "reference.yml", stack_config(n, decode1_max_num_seqs=5 + i),
                forks=5, pipelining=False), "phases"))

    if any(want(m) for m in ("pdstack-cold", "pdstack-noop-preview", "pdstack-noop-up", "pdstack-one-host",
                             "pdstack-cold-no-checkpoints")):
        pulumi = Pulumi(args.work / "pulumi", parallel)
        par = ["--parallel", str(parallel)]
        try:
            for _ in range(reps):
                clean_hosts(n)
                pulumi.fresh_stack(config)
                r = pulumi.measured("up", "--yes", "--skip-preview", *par, n=n)
                record("pdstack-cold", dict(measures(r), phases=pulumi_phases(r["lines"])))
            for _ in range(reps):
                r = pulumi.measured("preview", *par, n=n)
                if "to create" in r["out"] or "to update" in r["out"] or "to replace" in r["out"]:
                    raise RuntimeError("no-op preview is not a no-op:\n" + r["out"][-3000:])
                record("pdstack-noop-preview", measures(r))
            for _ in range(reps):
                r = pulumi.measured("up", "--yes", "--skip-preview", *par, n=n)
                record("pdstack-noop-up", measures(r))
            for i in range(reps):
                pulumi.set_config(stack_config(n, decode1_max_num_seqs=5 + i))
                r = pulumi.measured("up", "--yes", "--skip-preview", *par, n=n)
                record("pdstack-one-host", dict(measures(r), phases=pulumi_phases(r["lines"]),
                                                summary=[l for _, l in r["lines"] if re.search(r"\d+ (replaced|updated|unchanged)", l)]))
            # A diagnostic, not a way to run pdstack: the engine writes the state only at the end, so the
            # difference to pdstack-cold is what writing the state after every step costs.
            for _ in range(reps if want("pdstack-cold-no-checkpoints") else 0):
                clean_hosts(n)
                pulumi.fresh_stack(config)
                r = pulumi.measured("up", "--yes", "--skip-preview", *par, n=n, env={"PULUMI_SKIP_CHECKPOINTS": "true"})
                record("pdstack-cold-no-checkpoints", dict(measures(r), phases=pulumi_phases(r["lines"])))
        finally:
            pulumi.run("stack", "rm", "--yes", "--force", STACK, check=False)
    clean_hosts(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
