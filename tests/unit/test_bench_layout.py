"""The benchmark's pure helpers: its layouts are valid stack configs, and its log parsers read what the
tools print."""
import pytest

from bench.common import layout, stack_config
from bench.run import ansible_phases, pulumi_phases
from pdstack.config.parse import parse_cluster
from pdstack.rendering.plan import render


@pytest.mark.parametrize("n", [9, 17, 33])
def test_every_host_runs_exactly_one_container_and_the_config_is_valid(n):
    lay = layout(n)
    used = [h for pair in lay["prefill"] for h in pair] + [h for inst in lay["decode"] for h in inst] + [lay["proxy"]]
    assert sorted(used) == sorted(f"host{i}" for i in range(1, n + 1))
    assert len(lay["decode"][1]) == 1  # the one-host change edits a decode instance on one host
    deployment = render(parse_cluster(stack_config(n, decode1_max_num_seqs=7)))
    assert len(deployment.plans()) == n


def test_phases_from_pulumi_progress_lines():
    lines = [(0.5, "Updating (bench):"),
             (1.0, " +  command:remote:Command host1-device-addresses creating (0s) "),
             (2.0, " +  command:remote:Command host1-device-addresses created (1s) "),
             (9.0, " +  command:remote:Command decode-1-host8-ready created (6s) "),
             (9.5, " +  command:remote:Command proxy-host9-ready created (0.4s) ")]
    phases = pulumi_phases(lines)
    assert phases["first-step"] == 1.0
    assert phases["last-addresses"] == 2.0 and phases["last-ready"] == 9.0 and phases["last-proxy-ready"] == 9.5


def test_ansible_task_durations_add_up_to_the_run():
    lines = [(0.0, "PLAY [x] ***"), (1.0, "TASK [a] ****"), (3.0, "TASK [b] ****"), (4.0, "TASK [a] ****")]
    assert ansible_phases(lines, 10.0) == {"a": 2.0 + 6.0, "b": 1.0}
