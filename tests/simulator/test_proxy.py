"""global_proxy.sh stand-in: the two-hop PD flow, balancing, failure marking, daemon mode."""

import http.client
import json
import socket
import sys
import time

from simhelpers import (REPO, free_port, get_json, kv_config, new_host, post_json, request,
                        sim_env, sse_events, wait_health)

PROXY = [sys.executable, "-m", "simulator.proxy"]
CURL_REQUEST = {"model": "deepseek", "temperature": 0, "max_tokens": 50, "prompt": "how are you?",
                "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}


def engine(procs, model_dir, role, engine_id=0, env=None):
    host = new_host()
    port = free_port(host)
    extra = {"VLLM_LLMDATADIST_ZMQ_PORT": free_port(host)} if role == "kv_producer" else {}
    p = procs.vllm(model_dir, "--host", host, "--port", str(port), "--served-model-name",
                   "deepseek", "--kv-transfer-config", kv_config(role, engine_id),
                   env=sim_env(**extra, **(env or {})), name=role)
    return host, port, p


def start_proxy(procs, tmp_path, prefill, decode, *flags, env=None):
    port = free_port("0.0.0.0")
    run_dir = tmp_path / "proxy-run"
    procs.watch_pidfiles(run_dir)
    args = PROXY + ["--listen-port", str(port), "--prefill-servers-list", ",".join(prefill),
                    "--decode-servers-list", ",".join(decode), "--nginx-conf-file",
                    str(tmp_path / "nginx" / "nginx.conf"), "--log-file",
                    str(tmp_path / "proxy.log"), "--log-level", "info", "--foreground", *flags]
    p = procs.start(args, sim_env(PDSIM_PROXY_RUN_DIR=run_dir, **(env or {})), "proxy")
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port, p
        except OSError:
            assert p.poll() is None, p.output()
            assert time.monotonic() < deadline
            time.sleep(0.05)


def pd_cluster(procs, model_dir, n_decode=1, decode_env=None, prefill_env=None):
    ph, pp, pproc = engine(procs, model_dir, "kv_producer", 0, prefill_env)
    decodes = [engine(procs, model_dir, "kv_consumer", 1, decode_env) for _ in range(n_decode)]
    wait_health(ph, pp, proc=pproc)
    for h, p, proc in decodes:
        wait_health(h, p, proc=proc)
    return (ph, pp), [(h, p) for h, p, _ in decodes]


def stream_with_timing(port, body):
    """(events, arrival times): proves the answer arrives piecemeal, not in one write."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    events, times, buf = [], [], b""
    while True:
        line = resp.readline()
        if not line:
            break
        buf += line
        if line == b"\n":
            events.extend(sse_events(buf))
            times.append(time.monotonic())
            buf = b""
    conn.close()
    return events, times


def test_two_hop_streams_tokens_and_ends_with_usage(procs, model_dir, tmp_path):
    (ph, pp), [(dh, dp)] = pd_cluster(procs, model_dir, decode_env={"PDSIM_TOKEN_DELAY": "0.01"})
    port, _ = start_proxy(procs, tmp_path, [f"{ph}:{pp}"], [f"{dh}:{dp}"])
    events, times = stream_with_timing(port, CURL_REQUEST)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    tokens = [c for c in chunks if c["choices"]]
    assert len(tokens) >= 5
    assert times[len(tokens) - 1] - times[0] > 0.03  # tokens arrived over time
    assert all("usage" in c for c in tokens)  # continuous_usage_stats
    final = chunks[-1]
    assert final["choices"] == []
    use = final["usage"]
    assert use["completion_tokens"] == len(tokens)
    assert use["prompt_tokens"] == 4
    # decode counted the transferred KV as cached; the proxy reports the prefill's figure.
    assert use["prompt_tokens_details"]["cached_tokens"] == 0
    assert 'pdsim:kv_transfer_tokens_total{model_name="deepseek"} 4.0' in \
        request("GET", dh, dp, "/metrics")[2].decode()
    # Same text as an engine answering alone: PD split does not change greedy output.
    text = "".join(c["choices"][0]["text"] for c in tokens)
    alone = post_json(dh, dp, "/v1/completions", dict(CURL_REQUEST, stream=False,
                                                      stream_options=None))
    assert alone[2]["choices"][0]["text"] == text
    log = (tmp_path / "proxy.log").read_text()
    assert f"prefill={ph}:{pp} decode={dh}:{dp}" in log


def test_two_hop_chat_non_streaming(procs, model_dir, tmp_path):
    (ph, pp), [(dh, dp)] = pd_cluster(procs, model_dir)
    port, _ = start_proxy(procs, tmp_path, [f"{ph}:{pp}"], [f"{dh}:{dp}"])
    body = {"model": "deepseek", "temperature": 0, "max_tokens": 7,
            "messages": [{"role": "user", "content": "hello there"}]}
    status, hdrs, resp = post_json("127.0.0.1", port, "/v1/chat/completions", body,
                                   {"X-Request-Id": "chat-1"})
    assert status == 200, resp
    assert hdrs["x-request-id"] == "chat-1"
    assert resp["id"] == "chatcmpl-chat-1"
    assert resp["usage"]["completion_tokens"] == 7
    assert resp["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    status, models = get_json("127.0.0.1", port, "/v1/models")
    assert status == 200 and models["data"][0]["owned_by"] == "pdstack-simulator"


def test_health_lists_servers_up_and_down(procs, model_dir, tmp_path):
    (ph, pp), [(dh, dp)] = pd_cluster(procs, model_dir)
    dead = f"{new_host()}:{free_port('127.0.0.1')}"
    port, _ = start_proxy(procs, tmp_path, [f"{ph}:{pp}"], [f"{dh}:{dp}", dead])
    status, h = get_json("127.0.0.1", port, "/health")
    assert status == 200
    assert h["prefill"]["total"] == 1 and h["prefill"]["up"] == [f"{ph}:{pp}"]
    assert h["decode"]["total"] == 2
    assert h["decode"]["up"] == [f"{dh}:{dp}"] and h["decode"]["down"] == [dead]
    assert h["ready"] is True


def test_dead_decode_server_is_retried_and_marked_down(procs, model_dir, tmp_path):
    (ph, pp), decodes = pd_cluster(procs, model_dir, n_decode=2)
    dead = f"{new_host()}:{free_port('127.0.0.1')}"
    live = [f"{h}:{p}" for h, p in decodes]
    port, _ = start_proxy(procs, tmp_path, [f"{ph}:{pp}"], [dead] + live, "--decode-lb-sdk",
                          "round_robin")
    body = {"model": "deepseek", "prompt": "hi", "max_tokens": 2, "temperature": 0}
    for _ in range(6):
        status, _, resp = post_json("127.0.0.1", port, "/v1/completions", body)
        assert status == 200, resp
    h = get_json("127.0.0.1", port, "/health")[1]
    marked = {s["server"]: s["marked_down"] for s in h["decode"]["servers"]}
    assert marked[dead] is True and not any(marked[s] for s in live)
    log = (tmp_path / "proxy.log").read_text()
    assert f"upstream server {dead} of decode_servers temporarily disabled" in log
    # round robin spread the work over both live decode servers
    for h_, p_ in decodes:
        assert 'vllm:request_success_total{finished_reason="length",model_name="deepseek"} 0.0' \
            not in request("GET", h_, p_, "/metrics")[2].decode()


def test_no_server_up_is_503(procs, model_dir, tmp_path):
    dead_p = f"{new_host()}:{free_port('127.0.0.1')}"
    dead_d = f"{new_host()}:{free_port('127.0.0.1')}"
    port, _ = start_proxy(procs, tmp_path, [dead_p], [dead_d])
    status, _, resp = post_json("127.0.0.1", port, "/v1/completions",
                                {"prompt": "x", "max_tokens": 2})
    assert status == 503
    assert "no live upstreams" in resp["error"]["message"]
    assert resp["simulator"].startswith("pdstack-simulator")


def test_decode_kv_failure_is_passed_through(procs, model_dir, tmp_path):
    """Decode cannot get the KV (the prefill's lease ran out): the client sees decode's 500."""
    (ph, pp), [(dh, dp)] = pd_cluster(procs, model_dir, prefill_env={"PDSIM_KV_LEASE": "0"})
    port, _ = start_proxy(procs, tmp_path, [f"{ph}:{pp}"], [f"{dh}:{dp}"])
    status, _, resp = post_json("127.0.0.1", port, "/v1/completions",
                                {"prompt": "x", "max_tokens": 2})
    assert status == 500
    assert "KV transfer from prefill engine at" in resp["message"]
    # Prefill gone altogether: no live prefill upstream.
    procs.procs[0].p.kill()
    procs.procs[0].wait(5)
    status, _, resp = post_json("127.0.0.1", port, "/v1/completions",
                                {"prompt": "x", "max_tokens": 2})
    assert status == 503 and "prefill_servers" in resp["error"]["message"]


def test_daemon_mode_pidfile_and_stop(procs, model_dir, tmp_path):
    (ph, pp), [(dh, dp)] = pd_cluster(procs, model_dir)
    run_dir = tmp_path / "proxy-daemon"
    procs.watch_pidfiles(run_dir)
    env = sim_env(PDSIM_PROXY_RUN_DIR=run_dir)
    port = free_port("0.0.0.0")
    wrapper = str(REPO / "simulator" / "image" / "global_proxy.sh")
    env["PDSIM_HOME"] = str(REPO)
    r = procs.run([wrapper, "-p", str(port), "--prefill-servers-list", f"{ph}:{pp}",
                   "--decode-servers-list", f"{dh}:{dp}", "-f", str(tmp_path / "n.conf"),
                   "-l", str(tmp_path / "daemon.log")], env)
    assert r.returncode == 0, r.stderr
    pidfile = run_dir / f"global_proxy_{port}.pid"
    assert pidfile.exists()
    body = {"model": "deepseek", "prompt": "hi", "max_tokens": 3, "temperature": 0}
    assert post_json("127.0.0.1", port, "/v1/completions", body)[0] == 200
    assert "upstream decode_servers" in (tmp_path / "n.conf").read_text()
    # A second start on the same port succeeds: like the real script it stops the old one.
    r = procs.run([wrapper, "-p", str(port), "--prefill-servers-list", f"{ph}:{pp}",
                   "--decode-servers-list", f"{dh}:{dp}", "-f", str(tmp_path / "n.conf")], env)
    assert r.returncode == 0, r.stderr
    r = procs.run([wrapper, "--stop"], env)
    assert r.returncode == 0 and "stopped global proxy" in r.stdout
    assert not pidfile.exists()
    try:
        request("GET", "127.0.0.1", port, "/health", timeout=2)
        raise AssertionError("proxy still answers after --stop")
    except OSError:
        pass


def test_daemon_reports_bind_failure(procs, tmp_path):
    host = new_host()
    port = free_port("0.0.0.0")
    blocker = socket.socket()
    blocker.bind(("0.0.0.0", port))
    blocker.listen(1)
    try:
        run_dir = tmp_path / "proxy-fail"
        procs.watch_pidfiles(run_dir)
        r = procs.run(PROXY + ["-p", str(port), "--prefill-servers-list", f"{host}:1",
                               "--decode-servers-list", f"{host}:2", "-f",
                               str(tmp_path / "n.conf")], sim_env(PDSIM_PROXY_RUN_DIR=run_dir))
        assert r.returncode == 1
        assert "Address already in use" in r.stderr
    finally:
        blocker.close()


def test_flag_validation_and_dry_run(procs, tmp_path):
    env = sim_env(PDSIM_PROXY_RUN_DIR=tmp_path / "r")
    r = procs.run(PROXY + ["-p", "80", "--prefill-servers-list", "a:1",
                           "--decode-servers-list", "b:2"], env)
    assert r.returncode == 2 and "1024-65500" in r.stderr
    r = procs.run(PROXY + ["-p", "7000", "--prefill-servers-list", "a:1"], env)
    assert r.returncode == 2
    r = procs.run(PROXY + ["-p", "7000", "--prefill-servers-list", "a:1",
                           "--decode-servers-list", "b", "-d"], env)
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
    r = procs.run(PROXY + ["-p", "7000", "--prefill-servers-list", "10.0.0.1:9000",
                           "--decode-servers-list", "10.0.0.2:9100,10.0.0.2:9101",
                           "--decode-lb-sdk", "least_total_load", "-d"], env)
    assert r.returncode == 0
    assert "server 10.0.0.2:9101 max_fails=3 fail_timeout=10s;" in r.stdout
    assert "least_total_load on;" in r.stdout and "listen 7000 reuseport;" in r.stdout
