"""Stand-in for Omni-Infer's `global_proxy.sh` (nginx + Omni's prefill/balancing modules).

Same flags as the real script. Like nginx it daemonizes and records a pid file, and a start
first stops the proxies already running on this host (the real script kills every nginx).
`--foreground` is a simulator-only extension that keeps the proxy in the calling process, so
it can be a container's main process. The nginx.conf it writes documents the configuration
the real script would generate; nothing reads it.

Run directory (pid files, default log): $PDSIM_PROXY_RUN_DIR, default /tmp/pdsim-global-proxy.
"""

import argparse
import os
import re
import signal
import sys
import threading
import time

from . import SIMULATOR_ID, daemon, netaddr
from .proxy_server import Proxy, make_server
from .upstreams import LOAD_AWARE, Pool

MARKER = "simulator.proxy"
LEVELS = ["debug", "info", "notice", "warn", "error", "crit", "alert", "emerg"]


def run_dir() -> str:
    return os.environ.get("PDSIM_PROXY_RUN_DIR", "/tmp/pdsim-global-proxy")


def _servers(text: str) -> list[str]:
    # run_proxy_server.sh builds these lists with commas; tolerate spaces as well.
    out = [s for s in re.split(r"[,\s]+", text or "") if s]
    for s in out:
        try:
            netaddr.split_hostport(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not HOST:PORT") from None
    return out


def _size(text: str) -> str:
    if not re.fullmatch(r"\d+[kKmMgG]?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an nginx size (e.g. 1024K)")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="global_proxy.sh",
        description=f"{SIMULATOR_ID}: stand-in for Omni-Infer's global_proxy.sh. Sends each "
                    "completion request to a prefill server (max_tokens 1) and then to a decode "
                    "server with the prefill's kv_transfer_params.")
    a = p.add_argument
    a("--listen-port", "-p", type=int, default=8080)
    a("--prefill-servers-list", type=_servers)
    a("--decode-servers-list", type=_servers)
    a("--metrics-servers-list", type=_servers)
    a("--log-file", "-l")
    a("--log-level", default="notice", choices=LEVELS)
    a("--core-num", "-c", type=int, default=4)
    a("--start-core-index", "-s", type=int, default=0)
    a("--prefill-lb-sdk", default="pd_score_balance")
    a("--decode-lb-sdk", default="pd_score_balance")
    a("--prefill-max-num-seqs", type=int, default=16)
    a("--decode-max-num-seqs", type=int, default=32)
    a("--nginx-conf-file", "-f", default="/usr/local/nginx/conf/nginx.conf")
    a("--client-body-buffer-size", type=_size, default="1024K")
    a("--engine-type", default="vllm", choices=["vllm", "sglang"])
    a("--bootstrap-port", type=int)
    a("--enable-internal-metrics", nargs="?", const="128k")
    a("--stream-ops", default="off", choices=["add", "set_opt", "off"])
    a("--dry-run", "-d", action="store_true")
    a("--stop", "-S", action="store_true")
    a("--rollback", "-R", action="store_true")
    a("--foreground", action="store_true",
      help="simulator extension: serve in this process instead of daemonizing")
    return p


class FileLog:
    """nginx error_log lines: 'YYYY/MM/DD HH:MM:SS [level] PID#0: message'."""

    def __init__(self, path: str | None, level: str):
        self.path, self.min = path, LEVELS.index(level)
        self._lock = threading.Lock()
        self._f = open(path, "a") if path else None

    def __call__(self, level: str, msg: str) -> None:
        if LEVELS.index(level) < self.min:
            return
        line = f"{time.strftime('%Y/%m/%d %H:%M:%S')} [{level}] {os.getpid()}#0: {msg}\n"
        with self._lock:
            (self._f or sys.stderr).write(line)
            (self._f or sys.stderr).flush()


def _upstream_block(name: str, servers: list[str], lb: str, max_seqs: int, role: str) -> list[str]:
    lines = [f"    upstream {name} {{"]
    if lb == "pd_score_balance":
        lines += [f"        pd_score_balance_max_num_seqs {max_seqs};",
                  f"        pd_score_balance {role};"]
    elif lb == "least_total_load":
        lines += ["        least_total_load on;", "        least_total_load_batch_size 16;"]
    elif lb == "auto_balance_controller":
        lines += ["        auto_balance_controller on;",
                  "        auto_balance_controller_batch_size 32;"]
    elif lb == "length_balance":
        lines += ["        length_balance;"]
    elif lb in LOAD_AWARE:
        lines += [f"        {lb} on;"]
    elif lb != "round_robin":
        lines += ["        least_conn;"]
    if lb == "round_robin" or lb not in LOAD_AWARE:
        lines += [f"        zone {name} 1m;"]
    lines += ["        keepalive 2048;", "        keepalive_timeout 110s;",
              "        keepalive_requests 20000;"]
    lines += [f"        server {s} max_fails=3 fail_timeout=10s;" for s in servers]
    lines.append("    }")
    return lines


def render_conf(a) -> str:
    lines = [f"# Written by {SIMULATOR_ID} (global_proxy.sh stand-in). No nginx reads this file;",
             "# it shows the configuration the real script would generate.",
             f"error_log {a.log_file or 'logs/error.log'} {a.log_level};",
             f"worker_processes {a.core_num};",
             "events {", "    worker_connections 102400;", "}", "http {",
             f"    client_body_buffer_size {a.client_body_buffer_size};",
             "    client_max_body_size 100m;", "    proxy_read_timeout 14400s;",
             "    proxy_buffering off;"]
    lines += _upstream_block("prefill_servers", a.prefill_servers_list, a.prefill_lb_sdk,
                             a.prefill_max_num_seqs, "prefill")
    lines += _upstream_block("decode_servers", a.decode_servers_list, a.decode_lb_sdk,
                             a.decode_max_num_seqs, "decode")
    if a.metrics_servers_list:
        lines += _upstream_block("metrics_servers", a.metrics_servers_list, "round_robin", 0, "")
    lines += ["    server {", f"        listen {a.listen_port} reuseport;",
              "        location /v1 { proxy_pass http://prefill_servers; }",
              "        location ~ ^/v1(/chat)?/completions$ {",
              f"            set_request_id on; stream_ops {a.stream_ops};",
              "            prefill /prefill_internal; proxy_pass http://decode_servers;", "        }",
              "        location /prefill_internal { internal; proxy_pass http://prefill_servers; }"]
    if a.metrics_servers_list:
        lines.append("        location /metrics { proxy_pass http://metrics_servers; }")
    lines += ["    }", "}"]
    return "\n".join(lines) + "\n"


def _pidfile(port: int) -> str:
    return os.path.join(run_dir(), f"global_proxy_{port}.pid")


def stop_all(quiet: bool = False) -> int:
    """Stop every proxy recorded on this host, as the real script's stop_global_proxy does."""
    stopped = 0
    try:
        names = os.listdir(run_dir())
    except OSError:
        names = []
    for name in names:
        if not (name.startswith("global_proxy_") and name.endswith(".pid")):
            continue
        path = os.path.join(run_dir(), name)
        pid = daemon.alive_from_pidfile(path, MARKER)
        if pid and pid != os.getpid() and daemon.stop(pid):
            stopped += 1
            if not quiet:
                print(f"stopped global proxy pid {pid} ({name})")
        try:
            os.unlink(path)
        except OSError:
            pass
    if not quiet and not stopped:
        print("no global proxy was running")
    return stopped


def _write_conf(a) -> None:
    path = a.nginx_conf_file
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path) and not os.path.exists(path + "_bak"):
            os.replace(path, path + "_bak")
        with open(path, "w") as f:
            f.write(render_conf(a))
    except OSError as e:
        print(f"warning: cannot write {path}: {e}", file=sys.stderr)


def _pin_cores(a, log) -> None:
    want = set(range(a.start_core_index, a.start_core_index + a.core_num))
    try:
        have = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return
    use = want & have
    if not use:
        log("alert", f"sched_setaffinity() failed: cores {sorted(want)} do not exist "
                     f"(available {sorted(have)}); running unpinned")
        return
    try:
        os.sched_setaffinity(0, use)
        log("notice", f"pinned to cores {sorted(use)}")
    except OSError as e:
        log("alert", f"sched_setaffinity() failed: {e}")


def serve(a) -> int:
    log_path = a.log_file
    if not log_path and os.environ.get(daemon.READY_FD_ENV):
        log_path = os.path.join(run_dir(), "global_proxy.log")
    if log_path:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    log = FileLog(log_path, a.log_level)
    prefill = Pool("prefill_servers", a.prefill_servers_list, a.prefill_lb_sdk,
                   a.prefill_max_num_seqs, log=log)
    decode = Pool("decode_servers", a.decode_servers_list, a.decode_lb_sdk,
                  a.decode_max_num_seqs, log=log)
    metrics = (Pool("metrics_servers", a.metrics_servers_list, "round_robin", 0, log=log)
               if a.metrics_servers_list else None)
    try:
        httpd = make_server("0.0.0.0", a.listen_port,
                            Proxy(prefill, decode, metrics, a.stream_ops, log))
    except OSError as e:
        msg = f'bind() to 0.0.0.0:{a.listen_port} failed ({e})'
        log("emerg", msg)
        print(f"global_proxy: [emerg] {msg}", file=sys.stderr)
        daemon.notify(False, msg)
        return 1
    daemon.write_pid(_pidfile(a.listen_port))
    _pin_cores(a, log)
    log("notice", f"{SIMULATOR_ID} global proxy listening on 0.0.0.0:{a.listen_port}; "
                  f"prefill {a.prefill_servers_list} ({a.prefill_lb_sdk} -> {prefill.policy}), "
                  f"decode {a.decode_servers_list} ({a.decode_lb_sdk} -> {decode.policy})")
    print(f"global proxy ({SIMULATOR_ID}) listening on 0.0.0.0:{a.listen_port}", flush=True)

    def stop(signum, frame):
        log("notice", f"signal {signum} received, exiting")
        threading.Thread(target=httpd.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    daemon.notify(True, f"listening on 0.0.0.0:{a.listen_port}")
    httpd.serve_forever(poll_interval=0.2)
    httpd.server_close()
    try:
        if daemon.read_pid(_pidfile(a.listen_port)) == os.getpid():
            os.unlink(_pidfile(a.listen_port))
    except OSError:
        pass
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.stop:
        stop_all()
        return 0
    if a.rollback:
        bak = a.nginx_conf_file + "_bak"
        if os.path.exists(bak):
            os.replace(bak, a.nginx_conf_file)
            print(f"restored {a.nginx_conf_file} from {bak}")
        else:
            print(f"nothing to roll back: {bak} does not exist")
        return 0
    if not a.prefill_servers_list or not a.decode_servers_list:
        parser.error("--prefill-servers-list and --decode-servers-list are required")
    if not 1024 <= a.listen_port <= 65500:
        parser.error(f"--listen-port {a.listen_port} must be in 1024-65500")
    if a.engine_type != "vllm":
        print("global_proxy: the simulator implements only --engine-type vllm", file=sys.stderr)
        return 1
    if a.dry_run:
        sys.stdout.write(render_conf(a))
        print(f"# dry run: configuration is valid; nothing was started ({SIMULATOR_ID})")
        return 0
    _write_conf(a)
    if os.environ.get(daemon.READY_FD_ENV) is None:
        stop_all(quiet=True)
    if a.foreground:
        return serve(a)
    log_path = a.log_file or os.path.join(run_dir(), "global_proxy.log")
    ok, msg, pid = daemon.spawn(daemon.python_argv("simulator.proxy", argv + ["--foreground"]),
                                log_path)
    if not ok:
        print(f"global_proxy: failed to start: {msg}", file=sys.stderr)
        return 1
    print(f"global proxy started (pid {pid}, {msg or 'starting'}); log: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
