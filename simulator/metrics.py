"""The engine's counters, rendered in Prometheus text format under vLLM's metric names.

pdsim:* metrics are the simulator's own (KV transfers, readiness) and exist so a test or
an operator can see what the simulated wiring did."""

import threading

from . import SIMULATOR_ID

_DOC = {
    "vllm:num_requests_running": ("gauge", "Number of requests in model execution batches."),
    "vllm:num_requests_waiting": ("gauge", "Number of requests waiting to be processed."),
    "vllm:request_success_total": ("counter", "Count of successfully processed requests."),
    "vllm:prompt_tokens_total": ("counter", "Number of prefill tokens processed."),
    "vllm:generation_tokens_total": ("counter", "Number of generation tokens processed."),
    "pdsim:kv_transfer_tokens_total": ("counter",
                                       "Prompt tokens whose KV this engine fetched from a prefill engine."),
    "pdsim:kv_transfer_served_total": ("counter",
                                       "KV fetches this engine answered for decode engines."),
    "pdsim:ready": ("gauge", "1 when the engine passed start-up and answers /health with 200."),
    "pdsim:info": ("gauge", "Simulator build information."),
}


class Metrics:
    def __init__(self, model_name: str):
        self.model = model_name
        self._lock = threading.Lock()
        self.running = 0
        self.waiting = 0
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.kv_fetched_tokens = 0
        self.kv_served = 0
        self.ready = False

    def add(self, **deltas) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)

    def finished(self, reason: str, prompt_tokens: int, generated: int) -> None:
        with self._lock:
            self.success[reason] = self.success.get(reason, 0) + 1
            self.prompt_tokens += prompt_tokens
            self.generation_tokens += generated

    def render(self) -> str:
        lbl = f'model_name="{self.model}"'
        with self._lock:
            samples = {
                "vllm:num_requests_running": [(lbl, self.running)],
                "vllm:num_requests_waiting": [(lbl, self.waiting)],
                "vllm:request_success_total": [
                    (f'finished_reason="{r}",{lbl}', n) for r, n in sorted(self.success.items())],
                "vllm:prompt_tokens_total": [(lbl, self.prompt_tokens)],
                "vllm:generation_tokens_total": [(lbl, self.generation_tokens)],
                "pdsim:kv_transfer_tokens_total": [(lbl, self.kv_fetched_tokens)],
                "pdsim:kv_transfer_served_total": [(lbl, self.kv_served)],
                "pdsim:ready": [(lbl, int(self.ready))],
                "pdsim:info": [(f'simulator="{SIMULATOR_ID}",{lbl}', 1)],
            }
        out = []
        for name, rows in samples.items():
            kind, doc = _DOC[name]
            out.append(f"# HELP {name} {doc}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{{{labels}}} {float(v)}" for labels, v in rows)
        return "\n".join(out) + "\n"
