"""The engine's OpenAI-compatible HTTP API (the routes vLLM's api_server serves that a PD
deployment uses)."""

from . import MIMICS_VLLM, SIMULATOR_ID, httpio
from .engine import Engine
from .request import new_request_id, parse
from .httpio import HttpError, sse
from .log import Log
from .openai_schema import Shaper, error, usage

log = Log("api_server.py")


class _Handler(httpio.Handler):
    engine: Engine  # set on the subclass made by make_server

    def _rid_header(self, rid: str) -> dict:
        return {"X-Request-Id": rid}

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        e = self.engine
        if path in ("/health", "/ping"):
            if e.ready:
                self.send_json(200, {"status": "ok", "simulator": SIMULATOR_ID})
            else:
                self.send_json(503, {"status": "starting", "reason": e.reason,
                                     "simulator": SIMULATOR_ID})
        elif path == "/v1/models":
            data = [{"id": name, "object": "model", "created": 0,
                     "owned_by": "pdstack-simulator", "root": e.cfg.model, "parent": None,
                     "max_model_len": e.cfg.max_model_len,
                     "permission": []} for name in e.cfg.served_names]
            self.send_json(200, {"object": "list", "data": data, "simulator": SIMULATOR_ID})
        elif path == "/metrics":
            self.send_bytes(200, e.metrics.render().encode(),
                            "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/version":
            self.send_json(200, {"version": MIMICS_VLLM, "simulator": SIMULATOR_ID})
        else:
            self.send_json(404, {"detail": "Not Found", "simulator": SIMULATOR_ID})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self.send_json(404, {"detail": "Not Found", "simulator": SIMULATOR_ID})
            return
        rid = new_request_id(self.headers.get("X-Request-Id"))
        self.engine.in_flight(+1)
        try:
            self._complete(path == "/v1/chat/completions", rid)
        finally:
            self.engine.in_flight(-1)
            self.engine.request_done()

    def _complete(self, chat: bool, rid: str):
        e = self.engine
        if not e.ready:
            self.send_json(503, error(f"engine not ready: {e.reason}", 503,
                                      "ServiceUnavailableError"), self._rid_header(rid))
            return
        shaper = Shaper(chat, rid, e.cfg.served_name)
        try:
            job = parse(self.read_json(), chat, rid, e.cfg)
            if not e.cfg.args or not e.cfg.args.disable_log_requests:
                log.info(f"Received request {shaper.id}: {len(job.prompt_ids)} prompt tokens, "
                         f"max_tokens={job.max_tokens}, stream={job.stream}")
            e.pull_kv(job)
        except HttpError as err:
            self.send_json(err.status, error(err.message, err.status, err.etype),
                           self._rid_header(rid))
            return
        if job.stream:
            self._stream(job, shaper)
        else:
            self._whole(job, shaper)

    def _whole(self, job, shaper: Shaper):
        e = self.engine
        pieces, finish = [], None
        for piece, fin in e.generate(job):
            pieces.append(piece)
            finish = fin
        use = usage(len(job.prompt_ids), len(pieces), job.cached_tokens)
        body = shaper.full("".join(pieces), finish, use, e.hand_over_kv(job, finish))
        self.send_json(200, body, self._rid_header(job.request_id))

    def _stream(self, job, shaper: Shaper):
        e = self.engine
        self.start_chunked(200, "text/event-stream; charset=utf-8",
                           self._rid_header(job.request_id))
        n = 0
        gen = e.generate(job)
        try:
            if job.chat:
                self.write_chunk(sse(shaper.chunk(None, None, None, first=True)))
            for piece, fin in gen:
                n += 1
                use = (usage(len(job.prompt_ids), n, job.cached_tokens)
                       if job.continuous_usage else None)
                self.write_chunk(sse(shaper.chunk(piece, fin, use)))
            if job.include_usage:
                self.write_chunk(sse(shaper.usage_chunk(
                    usage(len(job.prompt_ids), n, job.cached_tokens))))
            self.write_chunk(httpio.SSE_DONE)
            self.end_chunked()
        except (BrokenPipeError, ConnectionResetError):
            gen.close()  # the client went away: the request is aborted, its slot freed
            log.info(f"request {job.request_id} aborted: client disconnected")
            self.close_connection = True


def make_server(engine: Engine) -> httpio.Server:
    """Bound (so a busy port fails at once) but not listening: Engine.serve decides when to listen."""
    handler = type("Handler", (_Handler,), {"engine": engine})
    server = httpio.Server((engine.cfg.host, engine.cfg.port), handler, bind_and_activate=False)
    try:
        server.server_bind()
    except OSError:
        server.server_close()
        raise
    return server

