"""Fixtures for the simulator tests; helpers live in simhelpers.py."""

import json

import pytest

from simhelpers import Procs


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.cleanup()


@pytest.fixture
def model_dir(tmp_path) -> str:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "deepseek_v3"}))
    return str(d)



def pytest_configure(config):
    config.addinivalue_line("markers", "docker: needs a working docker daemon (skipped without)")
