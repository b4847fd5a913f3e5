"""`pdstack status`, the pure part: what each host should run, the probe run there, and the verdict.

Nothing here talks to a host or to Pulumi. The flow is
  expected_state(render(spec)) -> probe_script(image, expected) -> [ssh] -> parse_probe(output)
  -> compare(expected, facts, image) -> rows -> repair_commands(rows, stack, urns) -> format_table.
"""
from __future__ import annotations

import base64
import binascii
import shlex
from dataclasses import dataclass, field

from ..rendering import remote
from ..rendering.model import HealthCheck
from ..rendering.plan import Deployment

q = shlex.quote


@dataclass(frozen=True)
class Expected:
    """One container the stack deployed, as the program renders it."""
    host: str
    address: str
    container: str
    role: str  # prefill | decode | proxy
    key: str  # HostContainer name: its Commands are <key>-files, <key>-image, <key>-container, <key>-ready
    health: tuple[HealthCheck, ...]
    script_path: str
    prefill_servers: tuple[str, ...] | None = None  # the proxy only
    decode_servers: tuple[str, ...] | None = None


def expected_state(deployment: Deployment) -> dict[str, list[Expected]]:
    """Host name -> the containers it should run, in deployment order."""
    out: dict[str, list[Expected]] = {}
    for plan in deployment.plans():
        proxy = plan.role == "proxy"
        out.setdefault(plan.host.name, []).append(Expected(
            host=plan.host.name, address=plan.host.address, container=plan.container.name, role=plan.role,
            key=plan.key, health=plan.health, script_path=plan.files[0].path,
            prefill_servers=deployment.prefill_servers if proxy else None,
            decode_servers=deployment.decode_servers if proxy else None))
    return out


# --- the probe: one bash script per host, sent on stdin; one fact per output line -------------------

def probe_script(image: str, expected: list[Expected]) -> str:
    lines = [
        "docker version -f '{{.Server.Version}}' >/dev/null 2>&1 || { echo 'docker-down'; exit 0; }",
        "command -v curl >/dev/null || echo 'no-curl'",
        f"id=$(docker image inspect -f '{{{{.Id}}}}' {q(image)} 2>/dev/null) || id=-",
        'echo "deployed-image $id"',
    ]
    for e in expected:
        name = q(e.container)
        lines += [
            f"st=$(docker inspect -f '{{{{.State.Status}}}} {{{{.Image}}}}' {name} 2>/dev/null) || st='missing -'",
            f'echo "container {e.container} $st"',
        ]
        if e.health:
            lines.append('case "$st" in running*) if command -v curl >/dev/null; then')
            for h in e.health:
                lines.append(f"  code=$({remote.http_code(h.url(e.address))}); "
                             f'echo "health {e.container} {h.port} ${{code:-000}}"')
            lines.append("fi;; esac")
        if e.prefill_servers is not None:
            lines.append(f"s=$(base64 -w0 < {q(e.script_path)} 2>/dev/null) || s=-; "
                         f'echo "script {e.container} ${{s:--}}"')
    return "\n".join(lines) + "\n"


@dataclass
class ContainerFacts:
    state: str | None = None  # None: no such container
    image_id: str | None = None
    health: dict[int, str] = field(default_factory=dict)  # port -> HTTP code ("000": no answer)
    script: str | None = None  # the launch script's text (proxy), None: unreadable


@dataclass
class HostFacts:
    error: str | None = None  # the host could not be checked (ssh failed, docker down)
    deployed_image_id: str | None = None  # id of the stack's image reference on this host; None: absent
    curl: bool = True
    containers: dict[str, ContainerFacts] = field(default_factory=dict)


def parse_probe(output: str) -> HostFacts:
    facts = HostFacts()
    for line in output.splitlines():
        words = line.split()
        if not words:
            continue
        kind = words[0]
        if kind == "docker-down":
            facts.error = "docker is not answering on the host (`docker version` failed)"
        elif kind == "no-curl":
            facts.curl = False
        elif kind == "deployed-image" and len(words) == 2:
            facts.deployed_image_id = None if words[1] == "-" else words[1]
        elif kind == "container" and len(words) == 4:
            state, image_id = words[2], words[3]
            facts.containers[words[1]] = (ContainerFacts() if state == "missing"
                                          else ContainerFacts(state=state, image_id=image_id))
        elif kind == "health" and len(words) == 4 and words[1] in facts.containers:
            facts.containers[words[1]].health[int(words[2])] = words[3]
        elif kind == "script" and len(words) == 3 and words[1] in facts.containers:
            try:
                facts.containers[words[1]].script = None if words[2] == "-" else base64.b64decode(words[2]).decode()
            except (binascii.Error, UnicodeDecodeError):
                facts.containers[words[1]].script = None
    return facts


def proxy_server_lists(script: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(prefill, decode) server lists of the global_proxy.sh line of a proxy launch script."""
    for line in script.splitlines():
        if "--prefill-servers-list" not in line:
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            return None
        try:
            prefill = words[words.index("--prefill-servers-list") + 1]
            decode = words[words.index("--decode-servers-list") + 1]
        except (ValueError, IndexError):
            return None
        return tuple(s for s in prefill.split(",") if s), tuple(s for s in decode.split(",") if s)
    return None


# --- the verdict ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    host: str
    container: str  # "-" for a row about the host itself
    check: str  # ssh | docker | present | running | image | health:<port> | prefill-servers | decode-servers | outputs
    expected: str
    found: str
    ok: bool
    # Commands (resource names, e.g. "decode-0-host5-container") whose replacement repairs the row;
    # () with ok=False: `pulumi up` alone (the stack itself differs), None: nothing pulumi can do.
    replace: tuple[str, ...] | None = ()
    hint: str = ""  # what to do when pulumi cannot repair it


def _short(image_id: str | None) -> str:
    if not image_id:
        return "-"
    return image_id.split(":", 1)[-1][:12] if image_id.startswith("sha256:") else image_id[:12]


def compare(expected: list[Expected], facts: HostFacts, image: str) -> list[Row]:
    """Every check of one host, passed or not. A container that is missing or not running gets no
    image/health rows: the repair of the first difference repairs those too."""
    if not expected:
        return []
    host = expected[0].host
    if facts.error:
        return [Row(host, "-", "ssh" if facts.error.startswith("ssh") else "docker", "reachable", facts.error,
                    False, None, hint=f"fix host {host} ({expected[0].address}), then run status again")]
    rows: list[Row] = []
    image_missing = facts.deployed_image_id is None
    for e in expected:
        c = facts.containers.get(e.container, ContainerFacts())
        ctr = f"{e.key}-container"
        if c.state is None:
            rows.append(Row(host, e.container, "present", "yes", "no", False, (ctr,)))
            continue
        rows.append(Row(host, e.container, "present", "yes", "yes", True))
        if c.state != "running":
            rows.append(Row(host, e.container, "running", "running", c.state, False, (ctr,)))
            continue
        rows.append(Row(host, e.container, "running", "running", "running", True))
        if image_missing:
            rows.append(Row(host, e.container, "image", image, "not on the host", False, (f"{e.key}-image", ctr)))
        else:
            same = c.image_id == facts.deployed_image_id
            rows.append(Row(host, e.container, "image", _short(facts.deployed_image_id), _short(c.image_id), same,
                            () if same else (ctr,)))
        for h in e.health:
            want = "200" if h.path else "HTTP answer"
            code = c.health.get(h.port)
            if not facts.curl:
                rows.append(Row(host, e.container, f"health:{h.port}", want, "curl missing on the host", False, None,
                                hint=f"install curl on {host}"))
                continue
            good = code is not None and h.accepts(code)
            found = "no answer" if code in (None, "000") else code
            rows.append(Row(host, e.container, f"health:{h.port}", want, found, good, () if good else (ctr,)))
        if e.prefill_servers is not None:
            rows += _proxy_rows(e, c)
    return rows


def _proxy_rows(e: Expected, c: ContainerFacts) -> list[Row]:
    fix = (f"{e.key}-files", f"{e.key}-container")
    lists = proxy_server_lists(c.script) if c.script is not None else None
    if lists is None:
        found = "unreadable" if c.script is None else "no server lists in it"
        return [Row(e.host, e.container, "servers", f"launch script {e.script_path}", found, False, fix)]
    rows = []
    for check, want, got in (("prefill-servers", e.prefill_servers, lists[0]),
                             ("decode-servers", e.decode_servers, lists[1])):
        same = tuple(want) == tuple(got)
        rows.append(Row(e.host, e.container, check, _servers(want), _servers(got), same, () if same else fix))
    return rows


def _servers(servers) -> str:
    return ",".join(servers) if servers else "(none)"


def outputs_rows(deployment: Deployment, outputs: dict) -> list[Row]:
    """The stack's `containers` output against the config's rendering: a difference means the config
    changed since the last `pulumi up`, and every other row is then about the new config."""
    want = {}
    for p in deployment.plans():
        want.setdefault(p.host.name, []).append(p.container.name)
    want = {h: sorted(names) for h, names in want.items()}
    got = outputs.get("containers")
    if got == want:
        return []
    return [Row("-", "-", "outputs", "containers of the config", "stack outputs differ (config changed "
                "since the last `pulumi up`?)", False, ())]


# --- repairs and the table --------------------------------------------------------------------------

@dataclass(frozen=True)
class Repair:
    argv: tuple[str, ...]  # relative to the repository (where Pulumi.yaml is)

    @property
    def text(self) -> str:
        return " ".join(q(w) for w in self.argv)


def _up(stack: str, config_file: str | None) -> list[str]:
    argv = ["bin/pulumi", "up", "-s", stack]
    if config_file:
        argv += ["--config-file", config_file]
    return argv


def repair_for(row: Row, stack: str, urns: dict[str, str], config_file: str | None = None) -> Repair | None:
    """`pulumi up --replace <urn>…` for the resources of a row; plain `pulumi up` when one of them is not
    in the stack's state (up creates it) or the stack itself differs; None when pulumi cannot help."""
    if row.ok or row.replace is None:
        return None
    argv = _up(stack, config_file)
    if row.replace and all(name in urns for name in row.replace):
        for name in row.replace:
            argv += ["--replace", urns[name]]
    return Repair(tuple(argv))


def repair_all(rows: list[Row], stack: str, urns: dict[str, str], config_file: str | None = None) -> Repair | None:
    """One command repairing every row pulumi can repair."""
    names: list[str] = []
    wanted = False
    for row in rows:
        if row.ok or row.replace is None:
            continue
        wanted = True
        for name in row.replace:
            if name in urns and name not in names:
                names.append(name)
    if not wanted:
        return None
    argv = _up(stack, config_file)
    for name in names:
        argv += ["--replace", urns[name]]
    return Repair(tuple(argv))


def format_table(rows: list[Row], repairs: list[Repair | None], *, show_all: bool = False) -> str:
    """The rows (only the differences unless show_all), with a reference to each row's repair."""
    numbered: dict[str, int] = {}
    table = [("HOST", "CONTAINER", "CHECK", "EXPECTED", "FOUND", "REPAIR")]
    for row, repair in zip(rows, repairs):
        if row.ok and not show_all:
            continue
        if row.ok:
            ref = "ok"
        elif repair is None:
            ref = row.hint or "-"
        else:
            ref = f"[{numbered.setdefault(repair.text, len(numbered) + 1)}]"
        table.append((row.host, row.container, row.check, row.expected, row.found, ref))
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths)) + "  " + r[5] for r in table]
    lines = [line.rstrip() for line in lines]
    if numbered:
        lines.append("")
        lines.append("Repair (from the repository, where Pulumi.yaml is):")
        for text, n in numbered.items():
            lines.append(f"  [{n}] {text}")
    return "\n".join(lines) + "\n"
