"""`pdstack status`: expected state, probe parsing, the verdict and repair commands on synthetic facts."""
from __future__ import annotations

import base64
import shlex
import subprocess

import pytest

from clusters import reference_2p1d
from pdstack.config.parse import parse_cluster
from pdstack.rendering.plan import render
from pdstack.status import check

IMAGE = "10.77.0.1:5000/pdstack/simulator:0.1.0@sha256:" + "ab" * 32
IMAGE_ID = "sha256:" + "11" * 32
OTHER_ID = "sha256:" + "22" * 32
STACK = "prod"


@pytest.fixture(scope="module")
def deployment():
    return render(parse_cluster(reference_2p1d()))


@pytest.fixture(scope="module")
def expected(deployment):
    return check.expected_state(deployment)


def urns_for(expected) -> dict[str, str]:
    out = {}
    for exps in expected.values():
        for e in exps:
            for part in ("files", "image", "container", "ready"):
                name = f"{e.key}-{part}"
                out[name] = f"urn:pulumi:{STACK}::pdstack::pdstack:index:HostContainer$command:remote:Command::{name}"
    return out


def healthy(exps, deployment, image_id=IMAGE_ID) -> check.HostFacts:
    """What a probe of a host running exactly what the stack deployed reports."""
    facts = check.HostFacts(deployed_image_id=image_id)
    for e in exps:
        c = check.ContainerFacts(state="running", image_id=image_id,
                                 health={h.port: "200" if h.path else "404" for h in e.health})
        if e.prefill_servers is not None:
            c.script = next(p for p in deployment.plans() if p.container.name == e.container).files[0].content
        facts.containers[e.container] = c
    return facts


def bad(rows):
    return [r for r in rows if not r.ok]


def test_expected_state_follows_the_host_plans(deployment, expected):
    assert sorted(expected) == ["d0", "d1", "p0", "p1"]
    p0 = [e.container for e in expected["p0"]]
    assert p0 == ["you_name_omni_infer_prefill_p0", "you_name_omni_infer_proxy_p0"]  # the proxy shares p0
    d0 = expected["d0"][0]
    assert d0.key == "decode-0-d0" and len(d0.health) == 16 and all(h.path == "/health" for h in d0.health)
    proxy = expected["p0"][1]
    assert proxy.role == "proxy" and proxy.health[0].path is None
    assert proxy.prefill_servers == deployment.prefill_servers and proxy.decode_servers == deployment.decode_servers
    assert proxy.script_path == "/tmp/scripts_path/you_name_omni_infer_proxy_p0.sh"


def test_a_host_running_what_the_stack_deployed_has_no_difference(deployment, expected):
    for host, exps in expected.items():
        rows = check.compare(exps, healthy(exps, deployment), IMAGE)
        assert rows and not bad(rows), bad(rows)
    rows = check.compare(expected["p0"], healthy(expected["p0"], deployment), IMAGE)
    checks = {(r.container, r.check) for r in rows}
    assert ("you_name_omni_infer_proxy_p0", "prefill-servers") in checks
    assert ("you_name_omni_infer_proxy_p0", "health:7000") in checks


def test_a_removed_container_is_one_row_repaired_by_replacing_its_container_command(deployment, expected):
    facts = healthy(expected["d1"], deployment)
    del facts.containers["you_name_omni_infer_decode_d1"]
    rows = bad(check.compare(expected["d1"], facts, IMAGE))
    assert [(r.check, r.expected, r.found) for r in rows] == [("present", "yes", "no")]
    urns = urns_for(expected)
    repair = check.repair_for(rows[0], STACK, urns)
    assert repair.argv == ("bin/pulumi", "up", "-s", STACK, "--replace", urns["decode-0-d1-container"])
    # Copy-pasteable: the URN's `$` is quoted for the shell.
    assert shlex.split(repair.text) == list(repair.argv)
    assert f"'{urns['decode-0-d1-container']}'" in repair.text


def test_a_stopped_container_is_reported_with_its_state(deployment, expected):
    facts = healthy(expected["p1"], deployment)
    facts.containers["you_name_omni_infer_prefill_p1"] = check.ContainerFacts(state="exited", image_id=IMAGE_ID)
    rows = bad(check.compare(expected["p1"], facts, IMAGE))
    assert [(r.check, r.found, r.replace) for r in rows] == [("running", "exited", ("prefill-1-p1-container",))]


def test_a_container_from_another_image_is_reported_with_both_ids(deployment, expected):
    facts = healthy(expected["d0"], deployment)
    facts.containers["you_name_omni_infer_decode_d0"].image_id = OTHER_ID
    rows = bad(check.compare(expected["d0"], facts, IMAGE))
    assert [(r.check, r.expected, r.found) for r in rows] == [("image", "11" * 6, "22" * 6)]
    assert rows[0].replace == ("decode-0-d0-container",)


def test_the_deployed_image_missing_from_the_host_replaces_the_image_command_too(deployment, expected):
    facts = healthy(expected["d0"], deployment)
    facts.deployed_image_id = None
    rows = bad(check.compare(expected["d0"], facts, IMAGE))
    assert [(r.check, r.found, r.replace) for r in rows] == [
        ("image", "not on the host", ("decode-0-d0-image", "decode-0-d0-container"))]


def test_a_dead_engine_port_is_reported_per_port(deployment, expected):
    facts = healthy(expected["d0"], deployment)
    facts.containers["you_name_omni_infer_decode_d0"].health[9103] = "000"
    facts.containers["you_name_omni_infer_decode_d0"].health[9104] = "503"
    rows = bad(check.compare(expected["d0"], facts, IMAGE))
    assert [(r.check, r.expected, r.found) for r in rows] == [("health:9103", "200", "no answer"),
                                                              ("health:9104", "200", "503")]


def test_the_proxy_needs_any_http_answer_not_200(deployment, expected):
    facts = healthy(expected["p0"], deployment)
    assert facts.containers["you_name_omni_infer_proxy_p0"].health == {7000: "404"}
    assert not bad(check.compare(expected["p0"], facts, IMAGE))
    facts.containers["you_name_omni_infer_proxy_p0"].health[7000] = "000"
    assert [r.check for r in bad(check.compare(expected["p0"], facts, IMAGE))] == ["health:7000"]


def test_a_proxy_pointing_elsewhere_rewrites_its_script_and_replaces_it(deployment, expected):
    facts = healthy(expected["p0"], deployment)
    proxy = facts.containers["you_name_omni_infer_proxy_p0"]
    wrong = deployment.decode_servers[0]
    proxy.script = proxy.script.replace(",".join(deployment.decode_servers), wrong)
    rows = bad(check.compare(expected["p0"], facts, IMAGE))
    assert [(r.check, r.found) for r in rows] == [("decode-servers", wrong)]
    assert rows[0].replace == ("proxy-p0-files", "proxy-p0-container")
    proxy.script = None
    rows = bad(check.compare(expected["p0"], facts, IMAGE))
    assert [(r.check, r.found) for r in rows] == [("servers", "unreadable")]


def test_an_unreachable_host_is_one_row_without_a_pulumi_repair(expected):
    facts = check.HostFacts(error="ssh root@10.0.1.1:22 failed: Connection timed out")
    rows = check.compare(expected["d0"], facts, IMAGE)
    assert len(rows) == 1 and rows[0].check == "ssh" and "timed out" in rows[0].found
    assert check.repair_for(rows[0], STACK, urns_for(expected)) is None
    assert "d0" in rows[0].hint


def test_a_resource_missing_from_state_is_repaired_by_a_plain_up(deployment, expected):
    facts = healthy(expected["d1"], deployment)
    del facts.containers["you_name_omni_infer_decode_d1"]
    row = bad(check.compare(expected["d1"], facts, IMAGE))[0]
    urns = urns_for(expected)
    del urns["decode-0-d1-container"]
    assert check.repair_for(row, STACK, urns, "/tmp/cfg.yaml").argv == (
        "bin/pulumi", "up", "-s", STACK, "--config-file", "/tmp/cfg.yaml")


def test_repair_all_replaces_every_drifted_resource_once(deployment, expected):
    urns = urns_for(expected)
    rows = []
    for host in ("d0", "d1"):
        facts = healthy(expected[host], deployment)
        name = expected[host][0].container
        facts.containers[name].state = "exited"
        rows += check.compare(expected[host], facts, IMAGE)
    facts = healthy(expected["d0"], deployment)
    facts.containers["you_name_omni_infer_decode_d0"].image_id = OTHER_ID
    rows += check.compare(expected["d0"], facts, IMAGE)
    every = check.repair_all(rows, STACK, urns)
    assert every.argv == ("bin/pulumi", "up", "-s", STACK, "--replace", urns["decode-0-d0-container"],
                          "--replace", urns["decode-0-d1-container"])
    assert check.repair_all([r for r in rows if r.ok], STACK, urns) is None


def test_the_table_numbers_each_distinct_repair(deployment, expected):
    urns = urns_for(expected)
    facts = healthy(expected["d0"], deployment)
    facts.containers["you_name_omni_infer_decode_d0"].health[9100] = "000"
    facts.containers["you_name_omni_infer_decode_d0"].health[9101] = "000"
    rows = check.compare(expected["d0"], facts, IMAGE)
    rows += check.compare(expected["d1"], check.HostFacts(error="ssh root@10.0.1.2:22 failed: refused"), IMAGE)
    repairs = [check.repair_for(r, STACK, urns) for r in rows]
    text = check.format_table(rows, repairs)
    lines = text.splitlines()
    assert lines[0].split() == ["HOST", "CONTAINER", "CHECK", "EXPECTED", "FOUND", "REPAIR"]
    assert len([line for line in lines if line.startswith("d0 ")]) == 2  # only the differences
    assert all(line.endswith("[1]") for line in lines if line.startswith("d0 "))
    assert "fix host d1" in text
    assert f"  [1] bin/pulumi up -s {STACK} --replace '{urns['decode-0-d0-container']}'" in lines
    assert "[2]" not in text
    every = check.format_table(rows, repairs, show_all=True)
    assert len(every.splitlines()) > len(lines) and " ok" in every


def test_outputs_that_do_not_match_the_config_ask_for_an_up(deployment):
    want = {}
    for p in deployment.plans():
        want.setdefault(p.host.name, []).append(p.container.name)
    assert check.outputs_rows(deployment, {"containers": {h: sorted(v) for h, v in want.items()}}) == []
    rows = check.outputs_rows(deployment, {"containers": {"p0": ["x"]}})
    assert len(rows) == 1 and not rows[0].ok
    assert check.repair_for(rows[0], STACK, {}).argv == ("bin/pulumi", "up", "-s", STACK)


def test_parse_probe_reads_every_fact():
    script = "global_proxy.sh --prefill-servers-list 10.0.0.1:9000 --decode-servers-list 10.0.1.1:9100,10.0.1.1:9101\n"
    out = "\n".join([
        f"deployed-image {IMAGE_ID}",
        f"container a running {IMAGE_ID}",
        "health a 9100 200",
        "health a 9101 000",
        "container b missing -",
        f"container c exited {OTHER_ID}",
        f"container p running {IMAGE_ID}",
        "health p 7000 404",
        "script p " + base64.b64encode(script.encode()).decode(),
        "", "garbage line",
    ])
    facts = check.parse_probe(out)
    assert facts.deployed_image_id == IMAGE_ID and facts.error is None and facts.curl
    assert facts.containers["a"].health == {9100: "200", 9101: "000"}
    assert facts.containers["b"].state is None
    assert facts.containers["c"].state == "exited" and facts.containers["c"].image_id == OTHER_ID
    assert check.proxy_server_lists(facts.containers["p"].script) == (
        ("10.0.0.1:9000",), ("10.0.1.1:9100", "10.0.1.1:9101"))
    assert check.parse_probe("deployed-image -\n").deployed_image_id is None
    assert check.parse_probe("docker-down\n").error.startswith("docker")
    assert check.parse_probe("no-curl\ndeployed-image -\n").curl is False


def test_the_probe_script_is_valid_bash_and_quotes_names(expected):
    script = check.probe_script(IMAGE, expected["p0"])
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "you_name_omni_infer_proxy_p0" in script and "http://10.0.0.1:7000/" in script
    assert "/tmp/scripts_path/you_name_omni_infer_proxy_p0.sh" in script


def test_the_rendered_proxy_script_yields_the_rendered_server_lists(deployment):
    script = deployment.proxy.files[0].content
    assert check.proxy_server_lists(script) == (deployment.prefill_servers, deployment.decode_servers)


def test_the_probe_script_reports_what_fake_docker_and_curl_say(tmp_path, deployment, expected):
    """The probe's shell, run against stand-ins for docker and curl: its output parses into the facts."""
    proxy_plan = deployment.proxy
    script_file = tmp_path / "proxy.sh"
    script_file.write_text(proxy_plan.files[0].content)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f"""#!/bin/bash
case "$*" in
  "version "*) exit 0;;
  "image inspect "*) echo {IMAGE_ID};;
  *you_name_omni_infer_prefill_p0) echo "running {OTHER_ID}";;
  *you_name_omni_infer_proxy_p0) echo "running {IMAGE_ID}";;
  *) exit 1;;
esac
""")
    (bin_dir / "curl").write_text("#!/bin/bash\ncase \"$*\" in *:7000/*) printf 404;; *) printf 000; exit 7;; esac\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    exps = [e if e.prefill_servers is None else check.Expected(**{**e.__dict__, "script_path": str(script_file)})
            for e in expected["p0"]]
    out = subprocess.run(["bash", "-s"], input=check.probe_script(IMAGE, exps), capture_output=True, text=True,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=True).stdout
    facts = check.parse_probe(out)
    rows = bad(check.compare(exps, facts, IMAGE))
    assert [(r.container, r.check, r.found) for r in rows] == [
        ("you_name_omni_infer_prefill_p0", "image", "22" * 6),
        ("you_name_omni_infer_prefill_p0", "health:9000", "no answer")]
