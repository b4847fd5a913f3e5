"""Tables (bench/results/<date>-<hosts>.md) and the plot (<date>-walltime.png) from bench.run's JSON.

Runs in the bench venv (matplotlib); imports nothing of pdstack."""
from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path

METHODS = [
    ("critical", "critical path: parallel SSH, all hosts at once (the floor)"),
    ("pdstack-cold", "pdstack cold `up` from an empty stack"),
    ("pdstack-cold-no-checkpoints", "diagnostic: pdstack cold `up`, state written only at the end (PULUMI_SKIP_CHECKPOINTS)"),
    ("ansible-reference", "Ansible (a): the reference's structure (forks 5, facts, 20 s pause)"),
    ("ansible-fast", "Ansible (b): best case (forks = hosts, pipelining, no pauses, no facts)"),
    ("pdstack-noop-preview", "pdstack no-op `preview`"),
    ("pdstack-noop-up", "pdstack no-op `up --skip-preview`"),
    ("critical-one-host", "one-host change: critical path of that host alone"),
    ("pdstack-one-host", "one-host change: pdstack `up --skip-preview`"),
    ("ansible-reference-one-host", "one-host change: Ansible (a) (redoes everything)"),
]
RATIO_TO = {"pdstack-cold": ["critical"], "pdstack-cold-no-checkpoints": ["critical"], "ansible-reference": ["critical"], "ansible-fast": ["critical"],
            "pdstack-one-host": ["critical-one-host"], "ansible-reference-one-host": ["critical-one-host"]}


def med(values):
    return statistics.median(values) if values else None


def fmt_range(values, unit="s", scale=1.0, digits=1):
    if not values:
        return "–"
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} {unit} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def machine() -> str:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) / 1024 / 1024
    import os
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}, shared"


def cpu_cell(runs: list[dict]) -> str:
    """Median CPU seconds of the deployer's processes / of the whole machine, "–" for what was not measured."""
    def median_of(key):
        values = [r[key] for r in runs if r.get(key) is not None]
        return f"{statistics.median(values):.1f}" if values else "–"
    own = median_of("cpu") if any(r.get("cpu_by") for r in runs) else "–"
    return f"{own} / {median_of('machine_cpu')}"


def table(d: dict, date: str) -> str:
    runs = d["runs"]
    walls = {m: [r["wall"] for r in rs] for m, rs in runs.items()}
    lines = [f"# Benchmark: {d['hosts']} hosts ({date})", "",
             f"- machine: {machine()}",
             f"- layout: {d['layout']}",
             f"- pulumi `--parallel {d['parallel']}` (4 × hosts); {d['reps']} repetitions each; "
             f"median (min–max); one-host change: decode-1's `engine.maxNumSeqs` on {d['change_host']}",
             "- ssh: logins the hosts' sshds accepted during the run (one per TCP connection); "
             "peak RSS: the Pulumi CLI and all its children (language host, program, provider), sampled every 0.2 s",
             "- CPU: seconds the deployer's processes used (pdstack: the Pulumi CLI and its children; Ansible: "
             "ansible-playbook and its children; the critical path's script is not counted) / seconds the whole "
             "machine was busy, testbed hosts included: the hosts and the deployer share its cores",
             "",
             "| method | wall time | ratio | ssh connections | peak RSS | CPU s: deployer / machine |",
             "| --- | --- | --- | --- | --- | --- |"]
    for m, title in METHODS:
        if m not in runs:
            continue
        ratios = [f"{med(walls[m]) / med(walls[b]):.2f} × {b} ({med(walls[m]) - med(walls[b]):+.1f} s)"
                  for b in RATIO_TO.get(m, []) if walls.get(b)]
        ratio = "; ".join(ratios) or "–"
        sshs = [r["ssh"] for r in runs[m] if "ssh" in r]
        rss = [r["peak_rss"] for r in runs[m] if r.get("peak_rss")]
        lines.append(f"| {title} | {fmt_range(walls[m])} | {ratio} | {med(sshs) if sshs else '–'} | "
                     f"{fmt_range(rss, 'MiB', 1 / 2**20, 0) if rss else '–'} | {cpu_cell(runs[m])} |")
    lines += ["", "Where the time goes (median seconds from the start until the last host finished each step):", ""]
    for m in ("critical", "pdstack-cold", "pdstack-cold-no-checkpoints", "critical-one-host", "pdstack-one-host"):  # cumulative
        phases = [r.get("phases") for r in runs.get(m, []) if r.get("phases")]
        if not phases:
            continue
        keys = list(phases[0])
        parts = []
        for k in keys:
            vals = [p[k] for p in phases if p.get(k) is not None]
            if vals:
                parts.append(f"{k} {statistics.median(vals):.1f}")
        lines.append(f"- {m}: " + ", ".join(parts))
    for m in ("ansible-fast", "ansible-reference", "ansible-reference-one-host"):
        phases = [r.get("phases") for r in runs.get(m, []) if r.get("phases")]
        if phases:
            tasks = {k: statistics.median([p.get(k, 0) for p in phases]) for k in phases[0]}
            top = sorted(tasks.items(), key=lambda kv: -kv[1])[:6]
            lines.append(f"- {m}, slowest tasks (median s): " + "; ".join(f"{k} {v:.1f}" for k, v in top))
    cpu_by = [r.get("cpu_by") for r in runs.get("pdstack-cold", []) if r.get("cpu_by")]
    if cpu_by:
        names = sorted(cpu_by[0], key=lambda k: -cpu_by[0][k])
        lines.append("- CPU of a cold `up` by process (median s): " + ", ".join(
            f"{k} {statistics.median([c.get(k, 0) for c in cpu_by]):.1f}" for k in names))
    rss_by = [r.get("peak_rss_by") for r in runs.get("pdstack-cold", []) if r.get("peak_rss_by")]
    if rss_by:
        last = rss_by[-1]
        lines.append("- peak RSS of a cold `up` by process: " + ", ".join(
            f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(last.items(), key=lambda kv: -kv[1])))
    summary = [r.get("summary") for r in runs.get("pdstack-one-host", []) if r.get("summary")]
    if summary:
        lines.append("- one-host change, what `up` did: " + " ".join(s.strip() for s in summary[-1]))
    return "\n".join(lines) + "\n"


def summary(data: list[dict], date: str) -> str:
    """Every size side by side, and each of the issue's targets checked against the medians."""
    sizes = [d["hosts"] for d in data]
    walls = [{m: med([r["wall"] for r in rs]) for m, rs in d["runs"].items()} for d in data]

    def row(title: str, cell) -> str:
        return f"| {title} | " + " | ".join(cell(d, w) for d, w in zip(data, walls)) + " |"

    def secs(m: str, base: str | None = None):
        def cell(d, w):
            if w.get(m) is None:
                return "not run"
            if base and w.get(base):
                return f"{w[m]:.1f} s ({w[m] / w[base]:.2f}×)"
            return f"{w[m]:.1f} s"
        return cell

    def per_run(m: str, key: str):
        def cell(d, w):
            value = med([r[key] for r in d["runs"].get(m, []) if key in r])
            return "–" if value is None else f"{value:g}"
        return cell

    lines = [f"# Benchmark summary ({date})", "", f"- machine: {machine()}", f"- layout: {data[-1]['layout']} "
             "(smaller sizes alike)", "- wall time: median of the repetitions (tables per size give min–max); "
             "ratios are to the critical path", "",
             "| | " + " | ".join(f"{n} hosts" for n in sizes) + " |", "| --- |" + " --- |" * len(sizes),
             row("critical path, all hosts at once", secs("critical")),
             row("**pdstack cold `up`**", secs("pdstack-cold", "critical")),
             row("diagnostic: pdstack cold `up`, state written only at the end", secs("pdstack-cold-no-checkpoints", "critical")),
             row("Ansible (a), reference structure", secs("ansible-reference", "critical")),
             row("Ansible (b), best case", secs("ansible-fast", "critical")),
             row("no-op `preview`", secs("pdstack-noop-preview")),
             row("no-op `up --skip-preview`", secs("pdstack-noop-up")),
             row("one-host change: that host's critical path", secs("critical-one-host")),
             row("one-host change: pdstack `up`", secs("pdstack-one-host", "critical-one-host")),
             row("one-host change: Ansible (a)", secs("ansible-reference-one-host", "critical-one-host")),
             row("SSH connections: cold `up` / no-op `up` / one-host change", lambda d, w: " / ".join(
                 per_run(m, "ssh")(d, w) for m in ("pdstack-cold", "pdstack-noop-up", "pdstack-one-host"))),
             row("peak RSS of the Pulumi processes, cold `up`", lambda d, w: fmt_range(
                 [r["peak_rss"] for r in d["runs"].get("pdstack-cold", []) if r.get("peak_rss")], "MiB", 1 / 2**20, 0)),
             row("CPU s, deployer / whole machine: critical path", lambda d, w: cpu_cell(d["runs"].get("critical", []))),
             row("CPU s, deployer / whole machine: pdstack cold `up`", lambda d, w: cpu_cell(d["runs"].get("pdstack-cold", []))),
             row("CPU s, deployer / whole machine: Ansible (b)", lambda d, w: cpu_cell(d["runs"].get("ansible-fast", []))),
             row("pulumi `--parallel`", lambda d, w: str(d["parallel"])),
             "", "Targets:", ""]

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "**missed**")

    def ratio(w, m, base):
        return w[m] / w[base] if w.get(m) and w.get(base) else None

    cold = [ratio(w, "pdstack-cold", "critical") for w in walls]
    grows = any(a is not None and b is not None and b > a + 0.05 for a, b in zip(cold, cold[1:]))
    last = walls[-1]
    lines.append(f"- cold `up` ≤ 1.25 × the critical path at {sizes[-1]} hosts, not growing with size: "
                 f"{verdict(None if cold[-1] is None else cold[-1] <= 1.25 and not grows)} "
                 f"(ratios {', '.join('–' if c is None else f'{c:.2f}' for c in cold)})")
    pv, up = last.get("pdstack-noop-preview"), last.get("pdstack-noop-up")
    lines.append(f"- no-op `preview` ≤ 5 s and no-op `up` ≤ 10 s at {sizes[-1]} hosts: "
                 f"{verdict(None if pv is None or up is None else pv <= 5 and up <= 10)}")
    deltas = [w["pdstack-one-host"] - w["critical-one-host"] if w.get("pdstack-one-host") and w.get("critical-one-host")
              else None for w in walls]
    known = [x for x in deltas if x is not None]
    lines.append(f"- one-host change ≤ that host's critical path + 5 s: "
                 f"{verdict(None if not known else all(x <= 5 for x in known))} "
                 f"(+{', +'.join('–' if x is None else f'{x:.1f}' for x in deltas)} s)")
    for m, name in (("ansible-reference", "Ansible (a)"), ("ansible-fast", "Ansible (b)")):
        pairs = [(n, w["pdstack-cold"], w[m]) for n, w in zip(sizes, walls) if w.get("pdstack-cold") and w.get(m)]
        lines.append(f"- cold `up` faster than {name}: " + ("not measured" if not pairs else "; ".join(
            f"{n} hosts {verdict(p < a)} ({p:.1f} vs {a:.1f} s)" for n, p, a in pairs)))
    return "\n".join(lines) + "\n"


def plot(data: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(13, 5.5))
    for m, title in METHODS:
        xs, ys, lo, hi = [], [], [], []
        for d in data:
            w = [r["wall"] for r in d["runs"].get(m, [])]
            if w:
                xs.append(d["hosts"])
                ys.append(statistics.median(w))
                lo.append(ys[-1] - min(w))
                hi.append(max(w) - ys[-1])
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=title.split(":")[0] if m.startswith("ansible") and "one-host" not in m else title)
    ax.set_xlabel("hosts")
    ax.set_ylabel("wall time, s (median, min–max)")
    ax.set_xticks(sorted({d["hosts"] for d in data}))
    ax.set_title("pdstack vs. critical path vs. Ansible (simulated cluster, 2 devices/host)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the plot: no line hidden
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(raw: Path, out: Path) -> None:
    data = sorted((json.loads(p.read_text()) for p in raw.glob("*.json")), key=lambda d: d["hosts"])
    date = raw.name
    out.mkdir(parents=True, exist_ok=True)
    for d in data:
        text = table(d, date)
        (out / f"{date}-{d['hosts']}.md").write_text(text)
        print(text)
    if data:
        text = summary(data, date)
        (out / f"{date}-summary.md").write_text(text)
        print(text)
        plot(data, out / f"{date}-walltime.png")
        print(f"plot: {out / f'{date}-walltime.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
