"""The simulated engine: start-up wiring checks, readiness, and request execution.

Start-up runs the checks a real Ascend engine would trip over when an address or port is
wrong (ranktables, DP rendezvous, KV endpoint, Ray membership) before it reports ready.
Unlike real vLLM, the HTTP port is bound early so /health can say *why* the engine is not
ready yet (503 with a reason) instead of refusing connections.
"""

import os
import signal
import socket
import threading
import time

from . import SIMULATOR_ID, MIMICS_VLLM, dp_coordinator, kv_transfer, netaddr, ranktable, textgen
from . import ray_standin
from .cli_vllm import Config
from .httpio import HttpError
from .log import Log, plain
from .metrics import Metrics
from .request import Job, PrefixCache

log = Log("engine.py")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        raise SystemExit(f"error: {name}={os.environ[name]!r} is not a number") from None


class Engine:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.metrics = Metrics(cfg.served_name)
        self.ready = False
        self.reason = "starting"
        self.fatal: str | None = None
        self.httpd = None
        self.coordinator = None
        self.dp_member = None
        self.kv_store = None
        self.host_ip = "127.0.0.1"
        self.prefix_cache = PrefixCache(cfg.block_size) if cfg.prefix_caching else None
        self.slots = threading.Semaphore(cfg.max_num_seqs)
        self.startup_delay = _env_float("PDSIM_STARTUP_DELAY", 2.0)
        # Real vLLM accepts HTTP connections only once start-up is complete, so a proxy (nginx) sees a
        # starting engine as a refused connection and moves on. PDSIM_HEALTH_DURING_STARTUP=1 listens
        # at once instead, so that /health can say why the engine is not ready (a diagnostic mode).
        self.listen_early = os.environ.get("PDSIM_HEALTH_DURING_STARTUP", "") not in ("", "0")
        self._settled = threading.Event()  # start-up finished, or failed, or a stop was asked for
        self._in_flight = 0
        self._in_flight_cv = threading.Condition()
        self._serving = False
        self.token_delay = _env_float("PDSIM_TOKEN_DELAY", 0.01)
        self.kv_lease = _env_float("PDSIM_KV_LEASE", kv_transfer.DEFAULT_LEASE_SECONDS)
        self.fail_after = int(_env_float("PDSIM_FAIL_AFTER_REQUESTS", 0))
        self._served = 0
        self._served_lock = threading.Lock()
        self._sockets_to_close = []

    # ------------------------------------------------------------------ start-up

    def _progress(self, reason: str) -> None:
        self.reason = reason

    def _summary(self) -> None:
        c = self.cfg
        log.info(f"{SIMULATOR_ID}: simulating vLLM {MIMICS_VLLM} API server "
                 f"(no model is loaded; answers are placeholder text)")
        log.info(f"non-default args: model={c.model!r} served_model_name={c.served_names} "
                 f"host={c.host} port={c.port} tensor_parallel_size={c.tp} "
                 f"max_model_len={c.max_model_len} block_size={c.block_size} "
                 f"max_num_seqs={c.max_num_seqs} enable_prefix_caching={c.prefix_caching} "
                 f"distributed_executor_backend={c.executor_backend}")
        log.info(f"data parallel: size={c.dp_size} rank={c.dp_rank} local_rank={c.dp_rank_local} "
                 f"master={c.dp_address}:{c.dp_rpc_port}")
        log.info(f"kv transfer: role={c.role} config={c.kv_config} engine_id={c.engine_id}")
        if c.args is not None:
            if c.args.speculative_config:
                log.info(f"speculative config accepted (not simulated): {c.args.speculative_config}")
            if c.args.additional_config:
                log.info(f"additional config accepted (not simulated): {c.args.additional_config}")
            for m in c.args.middleware:
                log.info(f"middleware {m} accepted (not loaded by the simulator)")
        if os.environ.get("ROLE"):
            log.info(f"ROLE={os.environ['ROLE']} ASCEND_RT_VISIBLE_DEVICES={c.visible_devices}")

    def _check_ranktables(self) -> dict | None:
        entry = None
        if self.cfg.rank_table:
            entry = ranktable.check_local(self.cfg.rank_table, self.cfg.visible_devices)
            log.info(f"local ranktable {self.cfg.rank_table}: this host is server "
                     f"{entry['server_ip']} with {len(entry.get('device', []))} devices")
        if self.cfg.global_rank_table:
            group = ranktable.check_global(self.cfg.global_rank_table)
            log.info(f"global ranktable {self.cfg.global_rank_table}: this host is in "
                     f"group {group.get('group_id')}")
        return entry

    def _pick_host_ip(self, entry: dict | None) -> str:
        if self.cfg.host not in ("0.0.0.0", "::", ""):
            return netaddr.resolve(self.cfg.host)
        if entry and netaddr.is_local(str(entry["server_ip"])):
            return str(entry["server_ip"])
        return netaddr.host_address()

    def _bind_side_ports(self) -> None:
        c = self.cfg
        if c.dp_size > 1 and c.dp_rank == 0:
            self.coordinator = dp_coordinator.Coordinator(c.dp_address, c.dp_rpc_port, c.dp_size)
            self.coordinator.start()
        if c.kv_config is not None and c.role in ("prefill", "both"):
            self.kv_store = kv_transfer.KVStore(self.host_ip, c.kv_port, c.engine_id,
                                                self.kv_lease,
                                                lambda: self.metrics.add(kv_served=1))
            self.kv_store.start()
        ev = c.kv_events_config or {}
        if ev.get("enable_kv_cache_events") and ev.get("publisher", "zmq") == "zmq":
            self._reserve_events_port(ev.get("endpoint", "tcp://*:5557"))

    def _reserve_events_port(self, endpoint: str) -> None:
        # A real engine binds a ZMQ PUB socket here; holding the port reproduces the
        # collisions (e.g. with a decode API port) without publishing anything.
        import socket
        host, port = netaddr.split_hostport(endpoint)
        host = "0.0.0.0" if host in ("*", "") else host
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(16)
        except OSError as e:
            s.close()
            raise kv_transfer.KVTransferError(
                f"cannot bind the KV events publisher on {endpoint}: {e}") from None
        self._sockets_to_close.append(s)
        log.info(f"KV events endpoint {endpoint} reserved (the simulator publishes no events)")

    def _startup(self) -> None:
        try:
            c = self.cfg
            if c.dp_size > 1:
                self._progress(f"joining DP group at {c.dp_address}:{c.dp_rpc_port}")
                self.dp_member = dp_coordinator.Member(
                    c.dp_address, c.dp_rpc_port, c.dp_rank, c.dp_size,
                    f"{self.host_ip}:{c.port}", self._progress)
                self.dp_member.join()
            if c.executor_backend == "ray":
                self._wait_for_ray()
            if self.startup_delay > 0:
                self._progress(f"loading model weights (simulated, {self.startup_delay:g}s)")
                log.info(f"simulating model load for {self.startup_delay:g}s")
                time.sleep(self.startup_delay)
        except dp_coordinator.DPError as e:
            self._die(str(e))
            return
        except Exception as e:  # any surprise must not leave a half-started engine behind
            self._die(f"start-up failed: {type(e).__name__}: {e}")
            return
        self.ready = True
        self.metrics.ready = True
        self.reason = "ready"
        self._settled.set()
        plain(f"INFO:     Started server process [{os.getpid()}]")
        plain("INFO:     Waiting for application startup.")
        plain("INFO:     Application startup complete.")
        plain(f"INFO:     Uvicorn running on http://{self.cfg.host}:{self.cfg.port} "
              "(Press CTRL+C to quit)")

    def _wait_for_ray(self) -> None:
        expected_ips = None
        if self.cfg.rank_table:
            _, data = ranktable.load(self.cfg.rank_table)
            expected_ips = sorted(set(ranktable.server_ips(data, self.cfg.rank_table)))
            expected = len(ranktable.server_ips(data, self.cfg.rank_table))
            source = f"servers in {self.cfg.rank_table}"
        else:
            expected = self.cfg.nnodes or 1
            source = "NNODES" if self.cfg.nnodes else "default (single node)"
        log.info(f"Ray executor: waiting for {expected} nodes ({source})"
                 + (f" at {expected_ips}" if expected_ips else ""))
        head, logged = None, ""
        while True:
            cands = [head] if head else ray_standin.head_candidates(self.host_ip)
            nodes, errors = None, []
            for cand in cands:
                try:
                    nodes = ray_standin.cluster_nodes(cand)
                    head = cand
                    break
                except Exception as e:  # refused, timeout, garbage: all mean "not there"
                    errors.append(f"{cand}: {getattr(e, 'strerror', None) or e}")
            if nodes is None:
                reason = "waiting for a Ray head (" + "; ".join(errors) + ")"
                head = None
            else:
                ips = sorted(n["ip"] for n in nodes)
                if len(nodes) != expected:
                    reason = (f"Ray cluster at {head} has {len(nodes)} of {expected} nodes "
                              f"({ips})")
                elif expected_ips and sorted(set(ips)) != expected_ips:
                    reason = (f"Ray cluster at {head} has nodes {ips} but the ranktable "
                              f"{self.cfg.rank_table} lists {expected_ips}")
                else:
                    log.info(f"Ray cluster at {head} complete: {ips}")
                    return
            self._progress(reason)
            if reason != logged:
                log.warning(reason)
                logged = reason
            time.sleep(0.5)

    def _die(self, msg: str) -> None:
        log.error(msg)
        self.fatal = msg
        self._stop_serving()

    def _stop_serving(self) -> None:
        self._settled.set()
        if self._serving:
            # Stop listening now, as uvicorn does on SIGTERM: a connection attempt is refused, and a
            # proxy tries the next server. serve_forever only notices shutdown() at its next poll, and
            # a connection that arrives meanwhile is left in the backlog and reset when the socket
            # closes, after the proxy has sent it a request it must not retry.
            try:
                self.httpd.socket.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            threading.Thread(target=self.httpd.shutdown, daemon=True).start()

    def serve(self) -> int:
        from .api_server import make_server
        c = self.cfg
        self._summary()
        if os.environ.get("PDSIM_FAIL_AT_START", "") not in ("", "0"):
            log.error("PDSIM_FAIL_AT_START is set: simulating an engine start-up failure")
            return 1
        try:
            entry = self._check_ranktables()
            self.host_ip = self._pick_host_ip(entry)
            log.info(f"host address for KV transfer and registration: {self.host_ip}")
            self.httpd = make_server(self)
            self._bind_side_ports()
        except (ranktable.RanktableError, dp_coordinator.DPError,
                kv_transfer.KVTransferError) as e:
            log.error(str(e))
            return 1
        except OSError as e:
            log.error(f"cannot start the API server on {c.host}:{c.port}: {e}")
            return 1

        def stop(signum, frame):
            log.info(f"received signal {signum}; shutting down")
            self.fatal = self.fatal or ("" if self.ready else f"stopped by signal {signum} during start-up")
            self._stop_serving()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if self.listen_early:
            self.httpd.server_activate()
            log.info(f"API server listening on http://{c.host}:{c.port} (not ready until start-up "
                     "completes; /health answers 503 with the reason meanwhile)")
        threading.Thread(target=self._startup, name="startup", daemon=True).start()
        if not self.listen_early:
            log.info(f"API port {c.host}:{c.port} reserved; it accepts connections once start-up completes")
            while not self._settled.wait(0.2):
                pass
            if self.fatal is not None:
                self.httpd.server_close()
                for s in self._sockets_to_close:
                    s.close()
                return 1 if self.fatal else 0
            self.httpd.server_activate()
        self._serving = True
        self.httpd.serve_forever(poll_interval=0.2)
        # Like uvicorn on SIGTERM: stop accepting, let the requests in flight finish (bounded), exit.
        self.httpd.socket.close()
        with self._in_flight_cv:
            if self._in_flight:
                log.info(f"waiting for {self._in_flight} request(s) in flight to finish")
            self._in_flight_cv.wait_for(lambda: self._in_flight == 0, timeout=DRAIN_SECONDS)
        self.httpd.server_close()
        for s in self._sockets_to_close:
            s.close()
        if self.fatal:
            return 1
        plain("INFO:     Shutting down")
        return 0

    def in_flight(self, delta: int) -> None:
        with self._in_flight_cv:
            self._in_flight += delta
            self._in_flight_cv.notify_all()

    # ------------------------------------------------------------------ requests

    def pull_kv(self, job: Job) -> None:
        """Decode side of a disaggregated request: fetch the prefill's KV before generating."""
        p = job.kv_params
        if not p or not p.get("do_remote_prefill"):
            return
        if self.cfg.kv_config is None:
            log.warning(f"request {job.request_id}: kv_transfer_params ignored "
                        "(no --kv-transfer-config); computing the prompt locally")
            return
        if self.cfg.role == "prefill":
            log.warning(f"request {job.request_id}: a kv_producer got do_remote_prefill; "
                        "computing the prompt locally")
            return
        host, port = p.get("remote_host"), p.get("remote_port")
        if not host or port in (None, "") or p.get("remote_engine_id") is None:
            log.warning(f"Got invalid KVTransferParams {p} for request {job.request_id}; "
                        "computing the prompt locally")
            return
        rid = p.get("remote_request_id") or job.request_id
        try:
            job.cached_tokens = kv_transfer.fetch(host, port, rid, p.get("remote_engine_id"),
                                                  job.prompt_ids)
        except kv_transfer.KVTransferError as e:
            log.error(f"request {job.request_id}: {e}")
            raise HttpError(500, str(e), "InternalServerError") from None
        job.transferred = True
        self.metrics.add(kv_fetched_tokens=job.cached_tokens)
        log.info(f"request {job.request_id}: fetched KV of {job.cached_tokens} tokens "
                 f"from {host}:{port}")

    def generate(self, job: Job):
        """Yield (piece, finish_reason) while holding one of max_num_seqs slots."""
        self.metrics.add(waiting=1)
        self.slots.acquire()
        self.metrics.add(waiting=-1, running=1)
        n, finish = 0, "abort"
        try:
            if not job.transferred and self.prefix_cache is not None:
                job.cached_tokens = self.prefix_cache.lookup_and_insert(job.prompt_ids)
            for piece, fin in textgen.generate(job.prompt_ids, job.max_tokens, job.temperature,
                                               job.seed, job.stop):
                if self.token_delay > 0:
                    time.sleep(self.token_delay)
                n += 1
                if fin:
                    finish = fin
                yield piece, fin
        finally:
            self.metrics.add(running=-1)
            self.slots.release()
            self.metrics.finished(finish, len(job.prompt_ids), n)

    def hand_over_kv(self, job: Job, finish: str):
        """Prefill side: keep the KV for a decode engine and say where to fetch it."""
        p = job.kv_params
        if not (p and p.get("do_remote_decode") and self.kv_store is not None):
            return None
        if finish != "length":
            # vLLM returns params only for a length-capped prefill; anything else means the
            # proxy did not send max_tokens=1 and decode would silently recompute.
            return None
        blocks = self.kv_store.put(job.request_id, job.prompt_ids, self.cfg.block_size)
        return {"do_remote_prefill": True, "do_remote_decode": False,
                "remote_engine_id": self.cfg.engine_id, "remote_host": self.host_ip,
                "remote_port": self.cfg.kv_port, "remote_block_ids": blocks,
                "remote_request_id": job.request_id}

    def request_done(self) -> None:
        """Counts served completion requests for PDSIM_FAIL_AFTER_REQUESTS."""
        if not self.fail_after:
            return
        with self._served_lock:
            self._served += 1
            crash = self._served >= self.fail_after
        if crash:
            log.error(f"PDSIM_FAIL_AFTER_REQUESTS={self.fail_after} reached: simulating an "
                      "engine crash (exiting without shutdown)")
            os._exit(1)


DRAIN_SECONDS = 15.0  # within docker stop's grace period (pdstack gives 20 s)


def run(cfg: Config) -> int:
    return Engine(cfg).serve()
