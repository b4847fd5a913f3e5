"""Data-parallel rendezvous: ranks meet at the coordinator that rank 0 binds on
(data-parallel-address, data-parallel-rpc-port), as start_api_servers.py wires them (DP flags of
1, the real values in VLLM_DP_* env)."""

import time

from simhelpers import free_port, get_json, new_host, sim_env, wait_health, wait_http


def start_rank(procs, model_dir, host, master_ip, master_port, rank, size, name=None):
    port = free_port(host)
    env = sim_env(VLLM_DP_SIZE=size, VLLM_DP_RANK=rank, VLLM_DP_RANK_LOCAL=rank,
                  VLLM_DP_MASTER_IP=master_ip, VLLM_DP_MASTER_PORT=master_port)
    p = procs.vllm(model_dir, "--host", host, "--port", str(port), "--data-parallel-size", "1",
                   "--data-parallel-size-local", "1", "--data-parallel-address", master_ip,
                   "--data-parallel-rpc-port", str(master_port), "--served-model-name", "deepseek",
                   env=env, name=name or f"rank{rank}")
    return port, p


def test_all_ranks_joined_makes_every_rank_healthy(procs, model_dir):
    d0, d1 = new_host(), new_host()
    master_port = free_port(d0)
    ranks = [start_rank(procs, model_dir, d0, d0, master_port, 0, 3),
             start_rank(procs, model_dir, d0, d0, master_port, 1, 3),
             start_rank(procs, model_dir, d1, d0, master_port, 2, 3)]
    hosts = [d0, d0, d1]
    for host, (port, p) in zip(hosts, ranks):
        wait_health(host, port, proc=p)
    assert "DP group complete: all 3 ranks joined" in ranks[0][1].output()


def test_wrong_coordinator_port_is_never_healthy(procs, model_dir):
    d0, d1 = new_host(), new_host()
    master_port = free_port(d0)
    wrong_port = free_port(d0)
    port0, r0 = start_rank(procs, model_dir, d0, d0, master_port, 0, 2)
    port1, r1 = start_rank(procs, model_dir, d1, d0, wrong_port, 1, 2)
    wait_http(d0, port0, proc=r0)
    wait_http(d1, port1, proc=r1)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        s1, b1 = get_json(d1, port1, "/health")
        s0, b0 = get_json(d0, port0, "/health")
        assert s1 == 503 and s0 == 503
        time.sleep(0.2)
    assert f"{d0}:{wrong_port}" in b1["reason"]
    assert "waiting for DP coordinator" in b1["reason"]
    assert "1/2 ranks joined" in b0["reason"]

    # The same rank pointed at the right port completes the group.
    r1.p.terminate()
    r1.wait(5)
    port1, r1 = start_rank(procs, model_dir, d1, d0, master_port, 1, 2, name="rank1-fixed")
    wait_health(d1, port1, proc=r1)
    wait_health(d0, port0, proc=r0)


def test_rank0_on_foreign_address_fails(procs, model_dir):
    host = new_host()
    port, p = start_rank(procs, model_dir, host, "198.51.100.7", 8100, 0, 2)
    assert p.wait(10) != 0
    assert "198.51.100.7" in p.output() and "not an address of this host" in p.output()


def test_duplicate_rank_fails(procs, model_dir):
    d0 = new_host()
    master_port = free_port(d0)
    port0, r0 = start_rank(procs, model_dir, d0, d0, master_port, 0, 3)
    port1, r1 = start_rank(procs, model_dir, d0, d0, master_port, 1, 3)
    deadline = time.monotonic() + 10
    while "DP rank 1 joined" not in r0.output():  # rank 1 registered before its twin starts
        assert time.monotonic() < deadline, r0.output()
        time.sleep(0.05)
    port1b, dup = start_rank(procs, model_dir, d0, d0, master_port, 1, 3, name="dup")
    assert dup.wait(10) != 0
    assert "duplicate DP rank 1" in dup.output()


def test_rank_outside_size_fails(procs, model_dir):
    d0 = new_host()
    port, p = start_rank(procs, model_dir, d0, d0, free_port(d0), 2, 2)
    assert p.wait(10) != 0
    assert "outside 0..1" in p.output()
