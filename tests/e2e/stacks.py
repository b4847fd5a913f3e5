"""Stack configs for end-to-end tests, written as Pulumi config files for `--config-file`."""
import json

import yaml

IMAGE = "10.77.0.1:5000/pdstack/simulator:0.1.0"
KEY = "/var/lib/pdstack-testbed/keys/id_ed25519"


def hosts(n: int) -> dict:
    return {f"host{i}": {"address": f"10.77.0.{10 + i}"} for i in range(1, n + 1)}


def small_topology(**overrides) -> dict:
    """2 prefill instances (one on 2 hosts), 2 decode instances (one on 2 hosts, one with TP 2)."""
    config = {
        "pdstack:image": IMAGE,
        "pdstack:ssh": {"user": "root", "privateKeyPath": KEY},
        "pdstack:hosts": hosts(7),
        "pdstack:prefill": [
            {"name": "prefill-a", "hosts": ["host1", "host2"], "devices": "0-3"},
            {"name": "prefill-b", "hosts": ["host3"], "devices": "0-3"},
        ],
        "pdstack:decode": [
            {"name": "decode-a", "hosts": ["host4", "host5"], "devices": "0-3"},
            {"name": "decode-b", "hosts": ["host6"], "devices": "0-3", "tensorParallel": 2},
        ],
        # Round robin makes every instance take part in a handful of sequential requests.
        "pdstack:proxy": {"host": "host7", "port": 7000, "prefillPolicy": "round_robin", "decodePolicy": "round_robin"},
        "pdstack:readiness": {"timeoutSeconds": 120},
    }
    config.update(overrides)
    return config


def write(path, config: dict) -> str:
    path.write_text(yaml.safe_dump({"config": config}, sort_keys=False))
    return str(path)
