"""`vllm serve` stand-in: flags, HTTP API, determinism, metrics, fault knobs."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from simhelpers import (REPO, free_port, get_json, new_host, post_json, request, sim_env,
                        sse_events, wait_health, wait_http)

VLLM = [sys.executable, "-m", "simulator.cli_vllm"]


def start_engine(procs, model_dir, *flags, env=None, host=None, name="vllm"):
    host = host or new_host()
    port = free_port(host)
    p = procs.vllm(model_dir, "--host", host, "--port", str(port),
                   "--served-model-name", "deepseek", *flags, env=env or sim_env(), name=name)
    return host, port, p


def test_unknown_flag_exits_2(procs, model_dir):
    r = procs.run(VLLM + ["serve", model_dir, "--no-such-flag", "1"], sim_env())
    assert r.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in r.stderr


def test_bad_json_flag_exits_2(procs, model_dir):
    r = procs.run(VLLM + ["serve", model_dir, "--kv-transfer-config", "{not json"], sim_env())
    assert r.returncode == 2
    assert "--kv-transfer-config" in r.stderr


def test_missing_model_dir_fails(procs, tmp_path):
    r = procs.run(VLLM + ["serve", str(tmp_path / "nope")], sim_env())
    assert r.returncode == 1
    assert "does not exist" in r.stderr


def test_only_serve_is_implemented(procs):
    assert procs.run(VLLM + ["chat"], sim_env()).returncode == 2
    r = procs.run(VLLM + ["--version"], sim_env())
    assert r.returncode == 0 and "pdstack-simulator" in r.stdout


def test_flags_as_start_api_servers_passes_them(procs, model_dir):
    """Omni's start_api_servers.py mixes --foo_bar and --foo-bar spellings; both must parse."""
    host, port, p = start_engine(
        procs, model_dir, "--trust-remote-code", "--gpu-memory-utilization", "0.92",
        "--block_size", "128", "--tensor-parallel-size", "1", "--data-parallel-size", "1",
        "--data-parallel-size-local", "1", "--data-parallel-address", "127.0.0.1",
        "--data-parallel-rpc-port", "1", "--max-model-len", "4096",
        "--speculative_config", '{"method": "deepseek_mtp", "num_speculative_tokens": 1}',
        "--kv-transfer-config", '{"kv_connector":"AscendHcclConnectorV1","kv_role":"kv_consumer"}',
        "--enable-expert-parallel", "--disable-log-requests", "--max-num-seqs", "4",
        "--no-enable-prefix-caching", "--enforce-eager", "--max-num-batched-tokens", "49152",
        "--long-prefill-token-threshold", "49152", "--additional-config",
        '{"graph_model_compile_config": {"level":1}}', "--distributed-executor-backend", "mp",
        "--middleware", "omni.adaptors.vllm.entrypoints.middleware.param_check.ValidateSamplingParams",
        "--kv-events-config", json.dumps({"enable_kv_cache_events": True, "publisher": "zmq",
                                          "endpoint": f"tcp://*:{free_port('0.0.0.0')}"}))
    wait_health(host, port, proc=p)


def test_health_503_with_reason_until_ready_then_startup_line(procs, model_dir):
    host, port, p = start_engine(procs, model_dir, env=sim_env(PDSIM_STARTUP_DELAY="1.5"))
    wait_http(host, port, proc=p)
    status, body = get_json(host, port, "/health")
    assert status == 503
    assert "loading model weights" in body["reason"]
    assert "Application startup complete." not in p.output()
    status, hdrs, body = post_json(host, port, "/v1/completions",
                                   {"prompt": "hi", "max_tokens": 2})
    assert status == 503
    wait_health(host, port, proc=p)
    assert "INFO:     Application startup complete." in p.output()


def test_by_default_connections_are_refused_until_ready_like_vllm(procs, model_dir):
    # A proxy must see a starting engine as a refused connection (and try another server), not as
    # a server answering 503: real vLLM listens only once start-up is complete.
    host, port, p = start_engine(procs, model_dir, env=sim_env(PDSIM_STARTUP_DELAY="2",
                                                               PDSIM_HEALTH_DURING_STARTUP="0"))
    deadline = time.monotonic() + 10
    while "reserved" not in p.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reserved" in p.output()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=2).close()
    wait_health(host, port, proc=p)
    assert "INFO:     Application startup complete." in p.output()


def test_on_sigterm_it_refuses_new_connections_and_finishes_those_in_flight(procs, model_dir):
    # Like uvicorn: a proxy sees a stopping engine as a refused connection and tries another server.
    # A connection accepted now and dropped at exit would fail a request the proxy cannot retry.
    import threading
    host, port, p = start_engine(procs, model_dir, env=sim_env(PDSIM_TOKEN_DELAY="0.1"))
    wait_health(host, port, proc=p)
    result = {}
    slow = threading.Thread(target=lambda: result.update(
        answer=post_json(host, port, "/v1/completions", {"prompt": "hi", "max_tokens": 20, "temperature": 0})))
    slow.start()
    time.sleep(0.5)  # in flight: about 5 of its 20 tokens out
    p.p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while "received signal" not in p.output() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "received signal" in p.output()
    # Within the server's 0.2 s poll, when it used to leave new connections in its backlog.
    attempts = []
    until = time.monotonic() + 0.3
    while time.monotonic() < until:
        try:
            socket.create_connection((host, port), timeout=1).close()
            attempts.append("accepted")
        except ConnectionRefusedError:
            attempts.append("refused")
        time.sleep(0.02)
    slow.join(10)
    assert attempts and set(attempts) == {"refused"}, attempts
    status, _, body = result["answer"]
    assert status == 200 and body["usage"]["completion_tokens"] == 20, (status, body)
    assert p.wait(10) == 0


def test_a_busy_api_port_fails_at_once(procs, model_dir):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        p = procs.vllm(model_dir, "--host", "127.0.0.1", "--port", str(port),
                       env=sim_env(PDSIM_HEALTH_DURING_STARTUP="0"))
        assert p.wait(10) == 1
        assert "cannot start the API server" in p.output()


def test_models_completions_and_headers(procs, model_dir):
    host, port, p = start_engine(procs, model_dir)
    wait_health(host, port, proc=p)
    status, models = get_json(host, port, "/v1/models")
    assert status == 200
    assert models["data"][0]["id"] == "deepseek"
    assert models["data"][0]["owned_by"] == "pdstack-simulator"
    assert models["simulator"].startswith("pdstack-simulator ")

    status, hdrs, body = post_json(host, port, "/v1/completions",
                                   {"model": "deepseek", "prompt": "how are you?",
                                    "max_tokens": 5, "temperature": 0},
                                   headers={"X-Request-Id": "req-42"})
    assert status == 200
    assert hdrs["x-request-id"] == "req-42"
    assert hdrs["x-simulator"].startswith("pdstack-simulator")
    assert body["id"] == "cmpl-req-42"
    assert body["simulator"].startswith("pdstack-simulator")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["prompt_tokens"] == 4
    assert body["kv_transfer_params"] is None

    status, _, chat = post_json(host, port, "/v1/chat/completions",
                                {"model": "deepseek", "max_tokens": 3, "temperature": 0,
                                 "messages": [{"role": "user", "content": "hello"}]})
    assert status == 200
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["completion_tokens"] == 3

    status, _, err = post_json(host, port, "/v1/completions",
                               {"model": "other", "prompt": "x", "max_tokens": 1})
    assert status == 404 and "does not exist" in err["message"]
    status, _, err = post_json(host, port, "/v1/completions",
                               {"model": "deepseek", "prompt": "x", "max_tokens": 40000})
    assert status == 400 and "maximum context length" in err["message"]
    status, _, err = post_json(host, port, "/v1/completions",
                               {"prompt": "x", "stream_options": {"include_usage": True}})
    assert status == 400


def test_streaming_usage_and_done(procs, model_dir):
    host, port, p = start_engine(procs, model_dir)
    wait_health(host, port, proc=p)
    req = {"model": "deepseek", "temperature": 0, "max_tokens": 6, "prompt": "how are you?",
           "stream": True, "stream_options": {"include_usage": True,
                                              "continuous_usage_stats": True}}
    status, hdrs, data = request("POST", host, port, "/v1/completions", req)
    assert status == 200
    assert hdrs["content-type"].startswith("text/event-stream")
    events = sse_events(data)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["simulator"].startswith("pdstack-simulator") for c in chunks)
    token_chunks = [c for c in chunks if c["choices"]]
    assert len(token_chunks) == 6
    assert [c["usage"]["completion_tokens"] for c in token_chunks] == [1, 2, 3, 4, 5, 6]
    assert token_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6

    # include_usage alone: usage only in the final chunk.
    req["stream_options"] = {"include_usage": True}
    events = sse_events(request("POST", host, port, "/v1/completions", req)[2])
    assert [("usage" in c) for c in events[:-1]] == [False] * 6 + [True]

    # chat streaming starts with the assistant role.
    chat = {"model": "deepseek", "temperature": 0, "max_tokens": 2, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    events = sse_events(request("POST", host, port, "/v1/chat/completions", chat)[2])
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1] == "[DONE]"


def test_greedy_output_is_deterministic_across_engines(procs, model_dir):
    h1, p1, a = start_engine(procs, model_dir, name="a")
    h2, p2, b = start_engine(procs, model_dir, name="b")
    wait_health(h1, p1, proc=a)
    wait_health(h2, p2, proc=b)
    req = {"model": "deepseek", "prompt": "how are you?", "max_tokens": 50, "temperature": 0}
    texts = {post_json(h, p, "/v1/completions", req)[2]["choices"][0]["text"]
             for h, p in ((h1, p1), (h2, p2), (h1, p1))}
    assert len(texts) == 1
    other = dict(req, prompt="a different prompt")
    assert post_json(h1, p1, "/v1/completions", other)[2]["choices"][0]["text"] not in texts


def test_metrics_count_requests(procs, model_dir):
    host, port, p = start_engine(procs, model_dir)
    wait_health(host, port, proc=p)
    for _ in range(2):
        post_json(host, port, "/v1/completions",
                  {"prompt": "how are you?", "max_tokens": 3, "temperature": 0})
    status, hdrs, data = request("GET", host, port, "/metrics")
    text = data.decode()
    assert status == 200 and hdrs["content-type"].startswith("text/plain")
    assert 'vllm:request_success_total{finished_reason="length",model_name="deepseek"} 2.0' in text
    assert 'vllm:prompt_tokens_total{model_name="deepseek"} 8.0' in text
    assert 'vllm:generation_tokens_total{model_name="deepseek"} 6.0' in text
    assert 'vllm:num_requests_running{model_name="deepseek"} 0.0' in text
    assert 'vllm:num_requests_waiting{model_name="deepseek"} 0.0' in text


def test_fail_at_start(procs, model_dir):
    host, port, p = start_engine(procs, model_dir, env=sim_env(PDSIM_FAIL_AT_START="1"))
    assert p.wait(10) == 1
    assert "PDSIM_FAIL_AT_START" in p.output()


def test_fail_after_requests(procs, model_dir):
    host, port, p = start_engine(procs, model_dir, env=sim_env(PDSIM_FAIL_AFTER_REQUESTS="2"))
    wait_health(host, port, proc=p)
    req = {"prompt": "hi", "max_tokens": 2}
    assert post_json(host, port, "/v1/completions", req)[0] == 200
    assert post_json(host, port, "/v1/completions", req)[0] == 200
    assert p.wait(10) == 1
    assert "simulating an engine crash" in p.output()
    try:
        request("GET", host, port, "/health", timeout=2)
        raise AssertionError("the engine still answers after its simulated crash")
    except OSError:
        pass


def test_http_port_in_use_fails(procs, model_dir):
    host, port, p = start_engine(procs, model_dir, name="first")
    wait_health(host, port, proc=p)
    q = procs.vllm(model_dir, "--host", host, "--port", str(port), env=sim_env(), name="second")
    assert q.wait(10) == 1
    assert "Address already in use" in q.output()


def test_vllm_wrapper_script(procs, model_dir):
    """The image's /usr/local/bin/vllm, run from the repository."""
    host = new_host()
    port = free_port(host)
    wrapper = str(REPO / "simulator" / "image" / "bin" / "vllm")
    env = sim_env(PDSIM_HOME=str(REPO))
    p = procs.start([wrapper, "serve", model_dir, "--host", host, "--port", str(port)], env,
                    "wrapper")
    wait_health(host, port, proc=p)
    assert subprocess.run([wrapper, "--version"], env=env, capture_output=True,
                          text=True).returncode == 0
