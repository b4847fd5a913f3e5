"""Every shipped stack config parses and renders, and the shapes they promise hold."""
from pathlib import Path

import pytest
import yaml

from pdstack.config.parse import parse_cluster
from pdstack.rendering.plan import render

ROOT = Path(__file__).resolve().parents[2]
STACKS = sorted(ROOT.glob("examples/Pulumi.*.yaml")) + [ROOT / "Pulumi.dev.yaml"]
SHAPES = {  # file -> (prefill instances, decode instances, hosts with containers, decode servers)
    "Pulumi.a3-1p1d.yaml": (1, 1, 9, 64),
    "Pulumi.a3-2p1d.yaml": (2, 1, 5, 32),
    "Pulumi.a3-2p2d.yaml": (2, 2, 7, 64),
    "Pulumi.dev.yaml": (1, 1, 9, 64),
}


@pytest.mark.parametrize("path", STACKS, ids=lambda p: p.name)
def test_stack_config_parses_and_renders(path):
    spec = parse_cluster(yaml.safe_load(path.read_text())["config"])
    deployment = render(spec)
    prefill, decode, containers, decode_servers = SHAPES[path.name]
    assert (len(spec.prefill), len(spec.decode)) == (prefill, decode)
    assert len(deployment.plans()) == containers
    assert len(deployment.decode_servers) == decode_servers


def test_every_shipped_stack_is_checked():
    assert sorted(p.name for p in STACKS) == sorted(SHAPES)
