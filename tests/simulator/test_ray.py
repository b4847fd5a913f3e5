"""Multi-node prefill over Ray: `ray start --head` / `--address`, and a vLLM with the Ray
executor that is ready only once the nodes of its ranktable have all joined."""

import sys
import time

from simhelpers import (free_port, get_json, new_host, sim_env, wait_health, wait_http,
                        write_local_ranktable)

RAY = [sys.executable, "-m", "simulator.ray_standin"]


class Host:
    """One simulated host: an address and its own Ray state directory."""

    def __init__(self, procs, tmp_path, name):
        self.ip = new_host()
        self.procs = procs
        self.dir = tmp_path / f"ray-{name}"
        procs.watch_pidfiles(self.dir)

    def env(self, **extra):
        return sim_env(RAY_STANDIN_DIR=self.dir, **extra)

    def ray(self, *args, timeout=20):
        return self.procs.run(RAY + list(args), self.env(), timeout=timeout)


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_ray_backend_waits_for_all_ranktable_nodes(procs, model_dir, tmp_path):
    head, worker = Host(procs, tmp_path, "p0"), Host(procs, tmp_path, "p1")
    ray_port = free_port(head.ip)
    r = head.ray("start", "--head", "--port", str(ray_port), "--num-gpus=1",
                 "--node-ip-address", head.ip)
    assert r.returncode == 0, r.stderr
    assert f"ray start --address='{head.ip}:{ray_port}'" in r.stdout

    rt = write_local_ranktable(tmp_path / "merged.json", [(head.ip, [0, 1]), (worker.ip, [0, 1])])
    api = free_port(head.ip)
    vllm = procs.vllm(model_dir, "--host", head.ip, "--port", str(api),
                      "--distributed-executor-backend", "ray", "--tensor-parallel-size", "4",
                      env=head.env(RANK_TABLE_FILE_PATH=rt), name="vllm-ray")
    wait_http(head.ip, api, proc=vllm)
    time.sleep(1.0)
    status, body = get_json(head.ip, api, "/health")
    assert status == 503 and "1 of 2 nodes" in body["reason"]

    r = worker.ray("start", f"--address={head.ip}:{ray_port}", "--num-gpus=1",
                   "--node-ip-address", worker.ip)
    assert r.returncode == 0, r.stderr
    assert "Ray runtime started." in r.stdout
    wait_health(head.ip, api, proc=vllm)
    assert f"Ray cluster at {head.ip}:{ray_port} complete" in vllm.output()

    status = head.ray("status")
    assert status.returncode == 0
    assert head.ip in status.stdout and worker.ip in status.stdout
    assert "0.0/2.0 GPU" in status.stdout

    assert "Stopped all 1 Ray processes." in worker.ray("stop").stdout
    assert "Stopped all 1 Ray processes." in head.ray("stop", "--force").stdout
    assert "Did not find any active Ray processes." in head.ray("stop").stdout


def test_worker_retries_until_head_is_up(procs, tmp_path):
    head, worker = Host(procs, tmp_path, "p0"), Host(procs, tmp_path, "p1")
    ray_port = free_port(head.ip)
    r = worker.ray("start", f"--address={head.ip}:{ray_port}", "--node-ip-address", worker.ip)
    assert r.returncode == 0, r.stderr
    assert "has not joined yet" in r.stdout
    assert head.ray("start", "--head", "--port", str(ray_port),
                    "--node-ip-address", head.ip).returncode == 0

    def joined():
        out = head.ray("status").stdout
        return worker.ip in out
    wait_until(joined, 10, "worker never joined the head")
    # A worker host finds the cluster it joined, as real `ray status` does.
    assert head.ip in worker.ray("status").stdout
    again = head.ray("start", "--head", "--port", str(ray_port), "--node-ip-address", head.ip)
    assert again.returncode == 1 and "already running" in again.stderr


def test_ray_nodes_not_matching_ranktable_never_ready(procs, model_dir, tmp_path):
    head, worker = Host(procs, tmp_path, "p0"), Host(procs, tmp_path, "p1")
    listed = new_host()  # the ranktable names a host that is not the one that joined
    ray_port = free_port(head.ip)
    assert head.ray("start", "--head", "--port", str(ray_port),
                    "--node-ip-address", head.ip).returncode == 0
    assert worker.ray("start", f"--address={head.ip}:{ray_port}",
                      "--node-ip-address", worker.ip).returncode == 0
    rt = write_local_ranktable(tmp_path / "merged.json", [(head.ip, [0]), (listed, [0])])
    api = free_port(head.ip)
    vllm = procs.vllm(model_dir, "--host", head.ip, "--port", str(api),
                      "--distributed-executor-backend", "ray",
                      env=head.env(RANK_TABLE_FILE_PATH=rt, RAY_ADDRESS=f"{head.ip}:{ray_port}"),
                      name="vllm-ray")
    wait_http(head.ip, api, proc=vllm)

    def mismatch():
        status, body = get_json(head.ip, api, "/health")
        assert status == 503
        return "but the ranktable" in body["reason"] and listed in body["reason"]
    wait_until(mismatch, 10, "never reported the node mismatch")


def test_ray_backend_without_head_is_not_ready(procs, model_dir, tmp_path):
    host = Host(procs, tmp_path, "p0")
    api = free_port(host.ip)
    nowhere = f"{host.ip}:{free_port(host.ip)}"
    vllm = procs.vllm(model_dir, "--host", host.ip, "--port", str(api),
                      "--distributed-executor-backend", "ray",
                      env=host.env(NNODES=2, RAY_ADDRESS=nowhere), name="vllm-ray")
    wait_http(host.ip, api, proc=vllm)
    time.sleep(0.5)
    status, body = get_json(host.ip, api, "/health")
    assert status == 503 and nowhere in body["reason"]
