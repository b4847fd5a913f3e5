"""One completion request: parsing and validating the OpenAI body (with vLLM's limits and
error messages), and the prefix cache that gives cached_tokens its meaning."""

import hashlib
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from . import textgen
from .cli_vllm import Config
from .httpio import HttpError


class PrefixCache:
    """Block-granular prompt prefix hits, so cached_tokens means what it means in vLLM."""

    def __init__(self, block_size: int, capacity: int = 100_000):
        self.bs, self.cap = block_size, capacity
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def lookup_and_insert(self, ids: list[int]) -> int:
        h = hashlib.blake2b(digest_size=16)
        hit, still_hitting = 0, True
        with self._lock:
            for start in range(0, len(ids) - self.bs + 1, self.bs):
                h.update(",".join(map(str, ids[start:start + self.bs])).encode() + b";")
                key = h.copy().digest()
                if still_hitting and key in self._seen:
                    hit += self.bs
                    self._seen.move_to_end(key)
                else:
                    still_hitting = False
                    self._seen[key] = None
            while len(self._seen) > self.cap:
                self._seen.popitem(last=False)
        return hit


@dataclass
class Job:
    chat: bool
    request_id: str
    prompt_ids: list
    max_tokens: int
    temperature: float
    seed: object
    stop: list
    stream: bool
    include_usage: bool
    continuous_usage: bool
    kv_params: dict | None
    cached_tokens: int = 0
    transferred: bool = False


def parse(body: dict, chat: bool, request_id: str, c: Config) -> Job:
    """Validate an OpenAI request body the way vLLM does and turn it into a Job."""
    model = body.get("model")
    if model is not None and model not in c.served_names and model != c.model:
        raise HttpError(404, f"The model `{model}` does not exist.", "NotFoundError")
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise HttpError(400, "messages must be a non-empty list")
        ids = textgen.tokenize(textgen.chat_prompt(msgs))
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    else:
        ids = _prompt_ids(body.get("prompt"))
        max_tokens = body.get("max_tokens", 16)  # OpenAI completions default
    if max_tokens is None:
        max_tokens = c.max_model_len - len(ids)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise HttpError(400, f"max_tokens must be at least 1, got {max_tokens}.")
    if len(ids) + max_tokens > c.max_model_len:
        raise HttpError(400, f"This model's maximum context length is {c.max_model_len} "
                        f"tokens. However, you requested {len(ids) + max_tokens} tokens "
                        f"({len(ids)} in the messages, {max_tokens} in the completion). "
                        "Please reduce the length of the messages or completion.")
    if body.get("n", 1) != 1:
        raise HttpError(400, "the simulator supports only n=1")
    stream = bool(body.get("stream", False))
    opts = body.get("stream_options")
    if opts is not None and not stream:
        raise HttpError(400, "Stream options can only be defined when `stream=True`.")
    opts = opts if isinstance(opts, dict) else {}
    include = bool(opts.get("include_usage"))
    temp = body.get("temperature", 1.0)
    if not isinstance(temp, (int, float)) or temp < 0:
        raise HttpError(400, f"temperature must be >= 0, got {temp}")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)]
    kvp = body.get("kv_transfer_params")
    return Job(chat=chat, request_id=request_id, prompt_ids=ids, max_tokens=max_tokens,
               temperature=float(temp), seed=body.get("seed"), stop=stop, stream=stream,
               include_usage=include,
               continuous_usage=include and bool(opts.get("continuous_usage_stats")),
               kv_params=kvp if isinstance(kvp, dict) else None)


def _prompt_ids(prompt) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        ids = textgen.tokenize(prompt)
    elif isinstance(prompt, list) and prompt and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = list(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise HttpError(400, "the simulator does not support batched prompts")
    else:
        raise HttpError(400, "prompt must be a string or a list of token ids")
    if not ids:
        raise HttpError(400, "The prompt cannot be empty.")
    return ids


def new_request_id(header: str | None) -> str:
    return header.strip() if header and header.strip() else uuid.uuid4().hex
