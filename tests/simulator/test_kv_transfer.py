"""Prefill -> decode KV hand-over: a decode engine must fetch the KV from the address and port
the prefill engine reported, and fails the request naming that address otherwise."""

import time

from simhelpers import (free_port, kv_config, new_host, post_json, request, sim_env,
                        wait_health)

PROMPT = "how are you?"


def start_pd(procs, model_dir, p_env=None, d_env=None):
    ph, dh = new_host(), new_host()
    kv_port = free_port(ph)
    pport, dport = free_port(ph), free_port(dh)
    penv = sim_env(VLLM_LLMDATADIST_ZMQ_PORT=kv_port, **(p_env or {}))
    p = procs.vllm(model_dir, "--host", ph, "--port", str(pport), "--served-model-name",
                   "deepseek", "--kv-transfer-config", kv_config("kv_producer", 0),
                   env=penv, name="prefill")
    d = procs.vllm(model_dir, "--host", dh, "--port", str(dport), "--served-model-name",
                   "deepseek", "--kv-transfer-config", kv_config("kv_consumer", 1),
                   env=sim_env(**(d_env or {})), name="decode")
    wait_health(ph, pport, proc=p)
    wait_health(dh, dport, proc=d)
    return (ph, pport, kv_port, p), (dh, dport, d)


def prefill(ph, pport, rid, prompt=PROMPT):
    body = {"model": "deepseek", "prompt": prompt, "max_tokens": 1, "temperature": 0,
            "stream": False,
            "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False,
                                   "remote_engine_id": None, "remote_block_ids": None,
                                   "remote_host": None, "remote_port": None}}
    status, _, resp = post_json(ph, pport, "/v1/completions", body, {"X-Request-Id": rid})
    assert status == 200, resp
    return resp


def decode(dh, dport, rid, params, prompt=PROMPT, max_tokens=8):
    body = {"model": "deepseek", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "kv_transfer_params": params}
    return post_json(dh, dport, "/v1/completions", body, {"X-Request-Id": rid})


def test_prefill_answer_names_its_kv_endpoint(procs, model_dir):
    (ph, pport, kv_port, _), _ = start_pd(procs, model_dir)
    resp = prefill(ph, pport, "r1")
    assert resp["choices"][0]["finish_reason"] == "length"
    assert resp["usage"]["completion_tokens"] == 1
    params = resp["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
    assert params["remote_engine_id"] == 0
    assert params["remote_host"] == ph
    assert params["remote_port"] == kv_port
    assert params["remote_request_id"] == "r1"
    assert isinstance(params["remote_block_ids"], list) and params["remote_block_ids"]


def test_prefill_without_length_cap_returns_no_params(procs, model_dir):
    (ph, pport, _, _), _ = start_pd(procs, model_dir)
    body = {"prompt": PROMPT, "max_tokens": 500, "temperature": 0,
            "kv_transfer_params": {"do_remote_decode": True}}
    status, _, resp = post_json(ph, pport, "/v1/completions", body)
    assert status == 200 and resp["choices"][0]["finish_reason"] == "stop"
    assert resp["kv_transfer_params"] is None


def test_decode_fetches_kv_and_reports_it_cached(procs, model_dir):
    (ph, pport, _, p), (dh, dport, d) = start_pd(procs, model_dir)
    params = prefill(ph, pport, "r2")["kv_transfer_params"]
    status, _, resp = decode(dh, dport, "r2", params)
    assert status == 200, resp
    assert resp["usage"]["prompt_tokens_details"]["cached_tokens"] == resp["usage"]["prompt_tokens"]
    assert resp["usage"]["completion_tokens"] == 8
    metrics = request("GET", dh, dport, "/metrics")[2].decode()
    assert 'pdsim:kv_transfer_tokens_total{model_name="deepseek"} 4.0' in metrics
    metrics = request("GET", ph, pport, "/metrics")[2].decode()
    assert 'pdsim:kv_transfer_served_total{model_name="deepseek"} 1.0' in metrics
    # The KV was handed over once; a second fetch finds nothing.
    status, _, err = decode(dh, dport, "r2", params)
    assert status == 500 and "no KV held for request r2" in err["message"]


def test_decode_with_wrong_kv_port_fails_naming_the_address(procs, model_dir):
    (ph, pport, kv_port, _), (dh, dport, _) = start_pd(procs, model_dir)
    params = prefill(ph, pport, "r3")["kv_transfer_params"]
    wrong = dict(params, remote_port=free_port(ph))
    status, _, err = decode(dh, dport, "r3", wrong)
    assert status == 500
    assert f"{ph}:{wrong['remote_port']}" in err["message"]
    assert err["simulator"].startswith("pdstack-simulator")
    # The right port still works: the failed attempt did not consume the KV.
    assert decode(dh, dport, "r3", params)[0] == 200


def test_decode_with_wrong_kv_host_fails(procs, model_dir):
    (ph, pport, kv_port, _), (dh, dport, _) = start_pd(procs, model_dir)
    params = prefill(ph, pport, "r4")["kv_transfer_params"]
    other = new_host()
    status, _, err = decode(dh, dport, "r4", dict(params, remote_host=other))
    assert status == 500 and f"{other}:{kv_port}" in err["message"]


def test_decode_rejects_kv_of_another_prompt_or_engine(procs, model_dir):
    (ph, pport, _, _), (dh, dport, _) = start_pd(procs, model_dir)
    params = prefill(ph, pport, "r5")["kv_transfer_params"]
    status, _, err = decode(dh, dport, "r5", dict(params, remote_engine_id=7))
    assert status == 500 and "engine_id" in err["message"]
    status, _, err = decode(dh, dport, "r5", params, prompt="something else entirely")
    assert status == 500 and "different prompt" in err["message"]


def test_kv_lease_expires(procs, model_dir):
    (ph, pport, _, _), (dh, dport, _) = start_pd(procs, model_dir, p_env={"PDSIM_KV_LEASE": "0.3"})
    params = prefill(ph, pport, "r6")["kv_transfer_params"]
    time.sleep(0.5)
    status, _, err = decode(dh, dport, "r6", params)
    assert status == 500 and "lease" in err["message"]


def test_second_prefill_on_same_kv_port_fails(procs, model_dir):
    (ph, pport, kv_port, _), _ = start_pd(procs, model_dir)
    p2 = procs.vllm(model_dir, "--host", ph, "--port", str(free_port(ph)), "--kv-transfer-config",
                    kv_config("kv_producer", 0), env=sim_env(VLLM_LLMDATADIST_ZMQ_PORT=kv_port),
                    name="prefill2")
    assert p2.wait(10) == 1
    assert f"{ph}:{kv_port}" in p2.output()


def test_requests_without_params_are_served_locally(procs, model_dir):
    _, (dh, dport, _) = start_pd(procs, model_dir)
    status, _, resp = post_json(dh, dport, "/v1/completions",
                                {"prompt": PROMPT, "max_tokens": 3, "temperature": 0})
    assert status == 200 and resp["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
