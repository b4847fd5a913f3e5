"""The resource graph of the real program (`__main__.py`) under Pulumi mocks.

The program runs once per config inside `@pulumi.runtime.test` (which waits for every registration and
re-raises any error of the program); a recording monitor keeps each RegisterResource request as the
engine would receive it: URN, parent, dependencies, options, and the inputs as serialized, secrets still
wrapped. The tests then assert on that plain data, so no assertion can be skipped by an unresolved Output.
"""
from __future__ import annotations

import logging
import copy
import re
import runpy
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest
from google.protobuf import json_format
from pulumi.runtime import mocks

from clusters import (IMAGE, PEM, REFERENCE_ADDRESSES, as_pulumi_config, reference_1p32_1d32, reference_2p1d, shared_host,
                      spec_of)
from pdstack import image_resolve
from pdstack.rendering import remote
from pdstack.rendering.plan import render
from pdstack.rendering.ranktable import render_ranktables

# pulumi_command's deprecated CopyFile class warns when the package is imported; nothing here uses it.
pytestmark = pytest.mark.filterwarnings("ignore:This resource is deprecated:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # rpc's marker of a secret value
STACK = "pulumi:pulumi:Stack"
READ_STACK_OUTPUTS = "pulumi:pulumi:readStackOutputs"
COMMAND = "command:remote:Command"
FILE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nZDMtb3duLWtleS1maWxl\n-----END OPENSSH PRIVATE KEY-----\n"

PREFILL_KEYS = [f"prefill-0-p{i}" for i in range(4)]
DECODE_KEYS = [f"decode-0-d{i}" for i in range(4)]
PROXY_KEY = "proxy-c0"
ENGINE_HOSTS = [f"p{i}" for i in range(4)] + [f"d{i}" for i in range(4)]


@dataclass
class Registered:
    urn: str
    type: str
    name: str
    parent: str  # URN, "" for the stack
    dependencies: list[str]  # URNs
    delete_before_replace: bool
    inputs: dict[str, Any]  # as serialized for the engine: secrets wrapped, camelCase keys
    property_dependencies: dict[str, list[str]]  # input name -> URNs its value came from

    def property_dependencies_flat(self) -> set[str]:
        return {urn for urns in self.property_dependencies.values() for urn in urns}


class RecordingMonitor(mocks.MockMonitor):
    def __init__(self, m: mocks.Mocks):
        super().__init__(m)
        self.registered: list[Registered] = []
        self.outputs: list[dict[str, Any]] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        self.registered.append(Registered(
            urn=response.urn, type=request.type, name=request.name, parent=request.parent,
            dependencies=list(request.dependencies), delete_before_replace=request.deleteBeforeReplace,
            inputs=json_format.MessageToDict(request.object),
            property_dependencies={k: list(v.urns) for k, v in request.propertyDependencies.items()}))
        return response

    def RegisterResourceOutputs(self, request):
        self.outputs.append(json_format.MessageToDict(request.outputs))
        return super().RegisterResourceOutputs(request)


class Mocks(mocks.Mocks):
    """Commands "run": the device reads print `<device> ipaddr:<address>` lines, the others an id."""

    def __init__(self, failing_host: str | None = None, previous: dict[str, Any] | None = None):
        self.failing_host = failing_host
        self.previous = previous or {}  # the stack's outputs of its last `up`, which the program reads
        self.references: list[str] = []  # stacks whose outputs the program read
        self.device_ips: dict[str, dict[int, str]] = {}
        self.names: dict[str, str] = {}  # address -> host name (device reads are named by address)

    def new_resource(self, args: mocks.MockResourceArgs):
        state = dict(args.inputs)
        if args.typ == COMMAND:
            if args.name.endswith("-device-addresses"):
                host = self.names[args.name.removesuffix("-device-addresses")]
                devices = [int(d) for d in re.search(r"for d in ([0-9 ]+);", args.inputs["create"]).group(1).split()]
                # From the machine's address, so a host's device addresses do not depend on read order.
                octets = args.name.removesuffix("-device-addresses").split(".")
                ips = self.device_ips[host] = {d: f"10.{octets[2]}.{octets[3]}.{d}" for d in devices}
                lines = [f"{d} ipaddr:{ip}" for d, ip in ips.items()]
                if host == self.failing_host:
                    lines[3] = "3 Error: get ip address failed"
                state["stdout"] = "\n".join(lines) + "\n"
            else:
                state["stdout"] = f"sha256:{args.name}"
        return f"{args.name}-id", state

    def call(self, args: mocks.MockCallArgs):
        if args.token == READ_STACK_OUTPUTS:
            self.references.append(args.args["name"])
            return {"name": args.args["name"], "outputs": self.previous, "secretOutputNames": []}
        raise AssertionError(f"the program called an unexpected function: {args.token}")


@dataclass
class Graph:
    resources: dict[str, Registered]  # by name (names are unique in this program)
    outputs: list[dict[str, Any]]
    stack_outputs: dict[str, Any]  # what `pulumi stack output` would show
    mocks: Mocks

    def commands(self) -> list[Registered]:
        return [r for r in self.resources.values() if r.type == COMMAND]


@pytest.fixture(autouse=True, scope="module")
def no_network():
    """The program asks the registry for the image digest: answer for it, and fail any socket use."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a unit test opened a network connection: {args}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(image_resolve, "resolve", lambda ref, timeout=5.0: (ref, None))
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield


def run_program(raw: dict[str, Any], m: Mocks | None = None) -> Graph:
    m = m or Mocks()
    m.names = {h["address"]: name for name, h in raw["pdstack:hosts"].items()}
    monitor = RecordingMonitor(m)
    # "organization": what the engine reports on a DIY (file) backend, as the testbed's stacks use.
    pulumi.runtime.set_mocks(m, project="pdstack", stack="unit", preview=False, monitor=monitor,
                             organization="organization")
    pulumi.runtime.set_all_config(as_pulumi_config(raw))

    exported: dict[str, Any] = {}

    @pulumi.runtime.test
    def program():
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        # Under mocks the stack registered its (then empty) outputs before the program ran: resolve
        # what the program exported from the stack resource itself.
        return pulumi.Output.from_input(pulumi.runtime.get_root_resource().outputs).apply(exported.update)

    program()
    names = [r.name for r in monitor.registered]
    assert len(names) == len(set(names)), "resource names must be unique"
    return Graph({r.name: r for r in monitor.registered}, monitor.outputs, exported, m)


def reference_ssh(tmp_path_factory) -> dict[str, Any]:
    """The stack-wide key as a value; d3 overrides it with a key file (read by components.connection)."""
    key_file = tmp_path_factory.mktemp("keys") / "d3_key"
    key_file.write_text(FILE_KEY)
    return {"ssh": {"user": "root", "privateKey": PEM}, "d3": {"privateKeyPath": str(key_file)}}


@pytest.fixture(scope="module")
def reference_raw(tmp_path_factory) -> dict[str, Any]:
    keys = reference_ssh(tmp_path_factory)
    raw = reference_1p32_1d32(ssh=keys["ssh"])
    raw["pdstack:hosts"]["d3"].update(keys["d3"])
    return raw


@pytest.fixture(scope="module")
def graph(reference_raw) -> Graph:
    return run_program(reference_raw)


# --- names and types -------------------------------------------------------------------------------


def test_component_type_tokens(graph):
    types = {name: r.type for name, r in graph.resources.items() if r.type not in (STACK, COMMAND)}
    assert types == {
        "devices": "pdstack:index:DeviceAddresses",
        "global-ranktable": "pdstack:index:GlobalRanktable",
        "prefill-0": "pdstack:index:PrefillGroup",
        "decode-0": "pdstack:index:DecodeGroup",
        "proxy": "pdstack:index:GlobalProxy",
        **{key: "pdstack:index:HostContainer" for key in PREFILL_KEYS + DECODE_KEYS + [PROXY_KEY]},
    }


def test_command_names_derive_from_hosts_and_instances(graph):
    expected = {f"{REFERENCE_ADDRESSES[h]}-device-addresses" for h in ENGINE_HOSTS}
    expected |= {f"{h}-global-ranktable" for h in ENGINE_HOSTS}
    expected |= {f"{key}-{step}" for key in PREFILL_KEYS + DECODE_KEYS + [PROXY_KEY]
                 for step in ("files", "image", "container", "ready")}
    assert {r.name for r in graph.commands()} == expected


def test_renaming_a_host_renames_only_its_own_resources_and_changes_no_other_input():
    """A renamed host keeps its machine's device read (known in the preview, so no ranktable becomes
    unknown); its role's resources and its global ranktable writer are renamed; nothing else changes."""
    raw = reference_2p1d(ssh={"privateKey": PEM})
    renamed = copy.deepcopy(raw)
    renamed["pdstack:hosts"] = {("dx" if k == "d0" else k): v for k, v in raw["pdstack:hosts"].items()}
    for inst in renamed["pdstack:decode"]:
        inst["hosts"] = ["dx" if h == "d0" else h for h in inst["hosts"]]
    first, second = run_program(raw), run_program(renamed)
    before = {r.name for r in first.commands()}
    after = {r.name for r in second.commands()}
    assert before - after == {"d0-global-ranktable"} | {f"decode-0-d0-{s}" for s in ("files", "image", "container", "ready")}
    assert after - before == {"dx-global-ranktable"} | {f"decode-0-dx-{s}" for s in ("files", "image", "container", "ready")}
    for name in before & after:
        assert first.resources[name].inputs == second.resources[name].inputs, name


def two_p_one_d_reordered() -> dict[str, Any]:
    """2P1D with the instances listed the other way round and the hosts map reversed."""
    raw = reference_2p1d(ssh={"privateKey": PEM})
    raw["pdstack:prefill"].reverse()
    raw["pdstack:hosts"] = dict(reversed(list(raw["pdstack:hosts"].items())))
    return raw


def test_names_do_not_depend_on_list_positions():
    raw = reference_2p1d(ssh={"privateKey": PEM})
    first = run_program(raw)
    second = run_program(two_p_one_d_reordered())
    assert first.resources.keys() - {"pdstack-unit"} == second.resources.keys() - {"pdstack-unit"}  # minus the stack
    assert {"prefill-0-p0-container", "prefill-1-p1-container", "decode-0-d1-container", "proxy-p0-container",
            f"{raw['pdstack:hosts']['p1']['address']}-device-addresses"} <= first.resources.keys()
    # A name stays with its host: the same container on the same address.
    for r in first.commands():
        other = second.resources[r.name]
        assert r.inputs["triggers"][0] == other.inputs["triggers"][0], r.name  # host=<address>
        if r.name.endswith("-container"):
            assert r.inputs["delete"] == other.inputs["delete"], r.name  # docker rm -f <container name>


# --- parents, options, dependencies ----------------------------------------------------------------


def parent_of(graph: Graph, name: str) -> tuple[str, str]:
    """(type, name) of a resource's parent, read from its URN (`urn:pulumi:<stack>::<project>::<types>::<name>`).

    The root stack is registered once per process, so it is not always among a run's registrations."""
    _, _, types, parent_name = graph.resources[name].parent.split("::", 3)
    return types.split("$")[-1], parent_name


def test_every_resource_has_the_right_parent(graph):
    for name in ("devices", "global-ranktable", "prefill-0", "decode-0", "proxy"):
        assert parent_of(graph, name)[0] == STACK
    for key in PREFILL_KEYS:
        assert parent_of(graph, key) == ("pdstack:index:PrefillGroup", "prefill-0")
    for key in DECODE_KEYS:
        assert parent_of(graph, key) == ("pdstack:index:DecodeGroup", "decode-0")
    assert parent_of(graph, PROXY_KEY) == ("pdstack:index:GlobalProxy", "proxy")
    for r in graph.commands():
        if r.name.endswith("-device-addresses"):
            assert parent_of(graph, r.name) == ("pdstack:index:DeviceAddresses", "devices")
        elif r.name.endswith("-global-ranktable"):
            assert parent_of(graph, r.name) == ("pdstack:index:GlobalRanktable", "global-ranktable")
        else:
            key = r.name.rsplit("-", 1)[0]
            assert parent_of(graph, r.name) == ("pdstack:index:HostContainer", key), r.name


def test_containers_are_deleted_before_they_are_replaced(graph):
    containers = [r for r in graph.commands() if r.name.endswith("-container")]
    assert len(containers) == 9
    assert all(r.delete_before_replace for r in containers)


def test_launch_files_are_deleted_before_they_are_replaced(graph):
    # `pulumi up --replace <-files URN>` (what `pdstack status` prints for an edited launch script): the
    # old and the new resource write the same paths, so the old one's delete must come first.
    files = [r for r in graph.commands() if r.name.endswith("-files")]
    assert len(files) == 9
    assert all(r.delete_before_replace for r in files)


def test_container_triggers_name_every_part(graph, reference_raw):
    plans = {p.key: p for p in render(spec_of(reference_raw)).plans()}
    for key, plan in plans.items():
        triggers = graph.resources[f"{key}-container"].inputs["triggers"]
        assert all(isinstance(t, str) and re.fullmatch(r"[a-z]+=\S+", t) for t in triggers), triggers
        parts = dict(t.split("=", 1) for t in triggers)
        expected = {"host", "image", "docker", "args", "script", "ranktables"} | ({"env"} if plan.role != "proxy" else set())
        assert set(parts) == expected, key
        assert parts["host"] == REFERENCE_ADDRESSES[plan.host.name] and parts["image"] == IMAGE
        assert triggers[2:-1] == [f"{name}={value}" for name, value in plan.parts]
        assert re.fullmatch(r"[0-9a-f]{12}", parts["ranktables"])


def test_ranktable_digests_differ_per_host(graph):
    digests = {h: graph.resources[f"{k}-container"].inputs["triggers"][-1] for h, k in
               zip(ENGINE_HOSTS, PREFILL_KEYS + DECODE_KEYS)}
    assert len(set(digests.values())) == len(ENGINE_HOSTS)


def test_container_waits_for_its_files_and_image(graph):
    for key in PREFILL_KEYS + DECODE_KEYS + [PROXY_KEY]:
        deps = set(graph.resources[f"{key}-container"].dependencies)
        assert {graph.resources[f"{key}-files"].urn, graph.resources[f"{key}-image"].urn} <= deps
        if key != PROXY_KEY:  # and for the global ranktable on its host
            host = key.rsplit("-", 1)[1]
            assert graph.resources[f"{host}-global-ranktable"].urn in deps, key
        assert graph.resources[f"{key}-container"].urn in graph.resources[f"{key}-ready"].dependencies


def registered_before(graph, first: str, then: str) -> bool:
    names = list(graph.resources)
    return names.index(first) < names.index(then)


def test_the_proxy_starts_after_every_engine_host_is_ready(graph):
    for key in PREFILL_KEYS + DECODE_KEYS:
        assert registered_before(graph, f"{key}-ready", f"{PROXY_KEY}-container"), key
    # Without a dependency in the state: deletes need no order, and with one a destroy with one host
    # down would keep every container that host's container depends on.
    every_ready = {graph.resources[f"{key}-ready"].urn for key in PREFILL_KEYS + DECODE_KEYS + [PROXY_KEY]}
    for r in graph.commands():
        assert not every_ready & (set(r.dependencies) | set(r.property_dependencies_flat())), r.name


# --- inputs ----------------------------------------------------------------------------------------


def outside_secrets(value: Any):
    """Every string in a serialized value that is not inside a secret."""
    if isinstance(value, dict):
        if SECRET_SIG in value:
            return
        for k, v in value.items():
            yield k
            yield from outside_secrets(v)
    elif isinstance(value, list):
        for v in value:
            yield from outside_secrets(v)
    elif isinstance(value, str):
        yield value


def test_private_keys_only_travel_inside_secrets(graph):
    secrets = (PEM, FILE_KEY)
    key_lines = [line for key in secrets for line in key.splitlines() if "PRIVATE KEY" not in line]
    seen = list(graph.outputs) + [r.inputs for r in graph.resources.values()]
    for value in seen:
        for text in outside_secrets(value):
            assert not any(line in text for line in key_lines)
    for r in graph.commands():
        connection = r.inputs["connection"]
        assert set(connection) == {SECRET_SIG, "value"}, r.name
        if r.name.endswith("-device-addresses"):
            host = graph.mocks.names[r.name.removesuffix("-device-addresses")]
        else:
            host = re.fullmatch(r"(?:.+-)?([a-z0-9]+)-(?:global-ranktable|files|image|container|ready)", r.name).group(1)
        assert connection["value"]["host"] == REFERENCE_ADDRESSES[host], r.name
        assert connection["value"]["privateKey"] == (FILE_KEY if host == "d3" else PEM), r.name


def test_device_addresses_are_read_once_per_host(graph):
    for host in ENGINE_HOSTS:
        r = graph.resources[f"{REFERENCE_ADDRESSES[host]}-device-addresses"]
        assert r.inputs["triggers"] == [f"host={REFERENCE_ADDRESSES[host]}", "devices=" + ",".join(map(str, range(16)))]
    assert set(graph.mocks.device_ips) == set(ENGINE_HOSTS)  # and never for the proxy's host


def test_no_resource_records_the_device_reads_its_ranktables_came_from(graph):
    """Every host's ranktables come from every host's reads: recorded, that is every read's URN in three
    resources per host, twice each, in a state the engine rewrites after every step."""
    reads = {r.urn for r in graph.commands() if r.name.endswith("-device-addresses")}
    assert len(reads) == len(ENGINE_HOSTS)
    for r in graph.commands():
        assert not reads & (set(r.dependencies) | r.property_dependencies_flat()), r.name
    # What they still record: the global ranktable a container reads on its host.
    assert graph.resources["p0-global-ranktable"].urn in graph.resources["prefill-0-p0-container"].dependencies


def test_hosts_get_their_launch_script_and_the_ranktables_of_the_addresses_read(graph, reference_raw):
    spec = spec_of(reference_raw)
    ranktables = render_ranktables(spec, graph.mocks.device_ips)
    for plan in render(spec).plans():
        files = graph.resources[f"{plan.key}-files"].inputs
        own = tuple(f for f in ranktables.get(plan.host.name, ()) if f.path in plan.ranktable_paths)
        expected = plan.files + own
        owner = remote.FileOwner(plan.records, f"pdstack/unit/{plan.key}-files")
        assert files["stdin"] == remote.write_files_script(expected, owner), plan.key
        assert files["create"] == "bash -s"
        assert files["delete"] == remote.delete_files_command(tuple(f.path for f in plan.files) + plan.ranktable_paths,
                                                              owner)


def test_containers_carry_their_stack_and_role_slot(graph, reference_raw):
    for plan in render(spec_of(reference_raw)).plans():
        create = graph.resources[f"{plan.key}-container"].inputs["create"]
        assert create == remote.run_container_command(plan, IMAGE, f"pdstack/unit/{plan.role}"), plan.key


def test_a_host_in_both_roles_reads_all_its_devices_once():
    raw = shared_host(ssh={"privateKey": PEM})
    graph = run_program(raw)
    n0, n1 = (f"{raw['pdstack:hosts'][h]['address']}-device-addresses" for h in ("n0", "n1"))
    reads = [r for r in graph.commands() if r.name.endswith("-device-addresses")]
    assert sorted(r.name for r in reads) == sorted([n0, n1])
    assert graph.resources[n0].inputs["triggers"][1] == "devices=" + ",".join(map(str, range(16)))
    assert graph.resources[n1].inputs["triggers"][1] == "devices=" + ",".join(map(str, range(8, 16)))
    assert {"prefill-0-n0-container", "decode-0-n0-container", "proxy-n1-container"} <= graph.resources.keys()


def test_a_failed_device_read_fails_the_program_naming_the_host(reference_raw):
    # The failed run leaves futures holding the same error, which asyncio would log one by one when
    # they are collected at exit, after pytest's summary; the error itself is asserted below.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    # The DeviceAddressError surfaces through the inputs that need the ranktables (a ValueError chain).
    with pytest.raises(ValueError, match=r"(?s)host d2: could not read device addresses.*\(device 3: hccn_tool said"):
        run_program(reference_raw, Mocks(failing_host="d2"))


def test_a_host_in_both_roles_has_one_global_ranktable_that_outlives_either_container():
    graph = run_program(shared_host(ssh={"privateKey": PEM}))
    written = [r for r in graph.commands() if r.name.endswith("-global-ranktable")]
    assert sorted(r.name for r in written) == ["n0-global-ranktable", "n1-global-ranktable"]
    n0 = graph.resources["n0-global-ranktable"]
    for key in ("prefill-0-n0", "decode-0-n0"):
        assert n0.urn in graph.resources[f"{key}-container"].dependencies
        # Removing one role from the host must not delete the file the other role reads.
        assert "global_ranktable_merge.json" not in graph.resources[f"{key}-files"].inputs["delete"]


def two_decode_instances() -> dict[str, Any]:
    raw = reference_2p1d(ssh={"privateKey": PEM})
    raw["pdstack:hosts"]["d2"] = {"address": "10.0.1.9"}
    raw["pdstack:decode"].append({"name": "decode-1", "hosts": ["d2"], "devices": "0-15"})
    return raw


def serving(raw: dict[str, Any], restarted: tuple[str, ...] = ()) -> dict[str, Any]:
    """The outputs the last `up` of `raw` exported: every decode instance serving, every container id
    the one the mocks create again, except on the hosts this `up` restarts (`restarted`)."""
    deployment = render(spec_of(raw))
    return {"decodeEndpoints": {inst.name: [] for inst, _ in deployment.decode},
            "containerIds": {p.container.name: "an older id" if p.host.name in restarted else f"sha256:{p.key}-container"
                             for p in deployment.plans()}}


class SlowReadiness(Mocks):
    """Readiness checks take a second, as real ones take a while: whatever waits for one shows it."""

    def new_resource(self, args: mocks.MockResourceArgs):
        if args.name.endswith("-ready"):
            time.sleep(1)
        return super().new_resource(args)


def test_the_program_reads_what_this_stack_deployed_last(graph):
    assert graph.mocks.references == ["organization/pdstack/unit"]
    deployment = render(spec_of(reference_1p32_1d32(ssh={"privateKey": PEM})))
    stack = graph.stack_outputs  # what the next `up` reads
    assert set(stack["decodeEndpoints"]) == {"decode-0"}
    assert stack["containerIds"] == {p.container.name: f"sha256:{p.key}-container" for p in deployment.plans()}


def test_a_serving_decode_instance_is_replaced_only_once_the_previous_one_is_ready():
    raw = two_decode_instances()
    graph = run_program(raw, Mocks(previous=serving(raw)))
    for h in ("d0", "d1"):
        assert registered_before(graph, f"decode-0-{h}-ready", "decode-1-d2-container")
    # The first instance and prefill wait on nothing of the kind: they register before any readiness.
    for key in ("decode-0-d0", "decode-0-d1", "prefill-0-p0", "prefill-1-p1"):
        assert registered_before(graph, f"{key}-container", "prefill-0-p0-ready"), key
    # Nothing of decode-0 flows into decode-1's inputs (replacing one replaces only it), and no
    # dependency on it is recorded.
    first_ready = {graph.resources[f"decode-0-{h}-ready"].urn for h in ("d0", "d1")}
    decode_1 = graph.resources["decode-1-d2-container"]
    assert not first_ready & (set(decode_1.dependencies) | set(decode_1.property_dependencies_flat()))
    # The wait is the program's, not the host's: no readiness check sleeps.
    assert not any("sleep 1" + "1" in r.inputs["create"] for r in graph.commands() if r.name.endswith("-ready"))


def test_decode_instances_that_were_not_serving_start_without_waiting():
    raw = two_decode_instances()
    for previous in ({}, {"decodeEndpoints": {"decode-0": []}}):  # a first deploy; decode-1 added
        graph = run_program(raw, SlowReadiness(previous=previous))
        for h in ("d0", "d1"):
            assert registered_before(graph, "decode-1-d2-container", f"decode-0-{h}-ready"), previous
    # Whereas a serving decode-1 waits for those same slow checks.
    graph = run_program(raw, SlowReadiness(previous=serving(raw)))
    assert registered_before(graph, "decode-0-d0-ready", "decode-1-d2-container")


def test_after_a_restart_of_the_previous_instance_the_next_waits_out_the_proxys_fail_timeout(monkeypatch):
    from pdstack import profile
    monkeypatch.setattr(profile, "PROXY_FAIL_TIMEOUT_SECONDS", 1)  # waits 1 + 1 s: measurable, quick
    raw = two_decode_instances()
    waited = {}
    for restarted in ((), ("d1",)):
        m = Timed(previous=serving(raw, restarted))
        run_program(raw, m)
        waited[restarted] = m.at["decode-1-d2-container"] - max(m.at[f"decode-0-{h}-ready"] for h in ("d0", "d1"))
    assert waited[()] < 1.5, waited  # decode-0 kept running: the proxy never took it out of rotation
    assert waited[("d1",)] >= 2, waited


class Timed(Mocks):
    """Notes when each resource was registered (the monotonic clock)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.at: dict[str, float] = {}

    def new_resource(self, args: mocks.MockResourceArgs):
        self.at[args.name] = time.monotonic()
        return super().new_resource(args)


