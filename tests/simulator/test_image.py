"""The simulator image: built from a mmdebstrap root filesystem (no outside image) and run with
--network host, as the deployment runs it."""

import json
import os
import shutil
import subprocess
import time
import uuid

import pytest

from simhelpers import (REPO, free_port, kv_config, new_host, post_json, sse_events, request,
                        wait_health)

TAG = "pdstack-simulator:pytest"


def _docker_ok() -> bool:
    if not shutil.which("docker") or not shutil.which("mmdebstrap"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = [pytest.mark.docker,
              pytest.mark.skipif(not _docker_ok(), reason="docker daemon or mmdebstrap unavailable")]


@pytest.fixture(scope="module")
def image():
    r = subprocess.run([str(REPO / "simulator" / "image" / "build.sh"), TAG],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return TAG


@pytest.fixture
def containers():
    ids = []
    yield ids
    for cid in ids:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60)


def run(containers, image, *args, env=None, mounts=()):
    name = f"pdsim-pytest-{uuid.uuid4().hex[:8]}"
    cmd = ["docker", "run", "-d", "--name", name, "--network", "host"]
    for k, v in (env or {}).items():
        cmd += ["-e", f"{k}={v}"]
    for m in mounts:
        cmd += ["-v", m]
    r = subprocess.run(cmd + [image, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    containers.append(name)
    return name


def logs(name):
    r = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


def test_image_layout_and_label(image):
    info = json.loads(subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                                     text=True, check=True).stdout)[0]
    assert info["Config"]["Labels"]["io.pdstack.simulator"] == "true"
    r = subprocess.run(["docker", "run", "--rm", image, "bash", "-c",
                        "test -x /workspace/omniinfer/tools/scripts/global_proxy.sh && "
                        "command -v vllm ray python3 ip curl && vllm --version"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "pdstack-simulator" in r.stdout


def test_pd_deployment_in_containers(image, containers, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    os.chmod(tmp_path, 0o755)
    mount = f"{model}:/models/deepseek:ro"
    ph, dh = new_host(), new_host()
    pport, dport, kvport = free_port(ph), free_port(dh), free_port(ph)
    base = {"PDSIM_STARTUP_DELAY": "0", "PDSIM_TOKEN_DELAY": "0.002"}
    p = run(containers, image, "vllm", "serve", "/models/deepseek", "--host", ph, "--port",
            str(pport), "--served-model-name", "deepseek", "--kv-transfer-config",
            kv_config("kv_producer", 0), env={**base, "VLLM_LLMDATADIST_ZMQ_PORT": kvport},
            mounts=[mount])
    d = run(containers, image, "vllm", "serve", "/models/deepseek", "--host", dh, "--port",
            str(dport), "--served-model-name", "deepseek", "--kv-transfer-config",
            kv_config("kv_consumer", 1), env=base, mounts=[mount])
    try:
        wait_health(ph, pport, timeout=30)
        wait_health(dh, dport, timeout=30)
    except BaseException:
        print(logs(p), logs(d))
        raise
    assert "INFO:     Application startup complete." in logs(p)
    proxy_port = free_port("0.0.0.0")
    x = run(containers, image, "/workspace/omniinfer/tools/scripts/global_proxy.sh",
            "--listen-port", str(proxy_port), "--prefill-servers-list", f"{ph}:{pport}",
            "--decode-servers-list", f"{dh}:{dport}", "--foreground")
    body = {"model": "deepseek", "temperature": 0, "max_tokens": 50, "prompt": "how are you?",
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    deadline = time.monotonic() + 30
    while True:
        try:
            status, _, data = request("POST", "127.0.0.1", proxy_port, "/v1/completions", body)
            break
        except OSError:
            assert time.monotonic() < deadline, logs(x)
            time.sleep(0.2)
    assert status == 200, data
    events = sse_events(data)
    assert events[-1] == "[DONE]" and events[-2]["choices"] == []
    assert events[-2]["usage"]["prompt_tokens"] == 4
    assert post_json(dh, dport, "/v1/completions", {"prompt": "x", "max_tokens": 1})[0] == 200
