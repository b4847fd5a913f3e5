"""OpenAI-compatible response bodies in the shapes vLLM 0.9 emits, each marked as coming
from the simulator."""

import time

from . import SIMULATOR_ID


def error(message: str, status: int, etype: str = "BadRequestError") -> dict:
    # vLLM 0.9's ErrorResponse shape.
    return {"object": "error", "message": message, "type": etype, "param": None,
            "code": status, "simulator": SIMULATOR_ID}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": (None if cached_tokens is None
                                  else {"cached_tokens": cached_tokens}),
    }


class Shaper:
    """Builds the bodies of one request (completion or chat)."""

    def __init__(self, chat: bool, request_id: str, model: str):
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.model = model
        self.created = int(time.time())

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, text: str, finish: str, use: dict, kv_params) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "reasoning_content": None,
                                              "content": text, "tool_calls": []},
                      "logprobs": None, "finish_reason": finish, "stop_reason": None}
            body = self._base("chat.completion")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish,
                      "stop_reason": None, "prompt_logprobs": None}
            body = self._base("text_completion")
        body.update(choices=[choice], usage=use, prompt_logprobs=None,
                    kv_transfer_params=kv_params, simulator=SIMULATOR_ID)
        return body

    def chunk(self, piece: str | None, finish: str | None, use: dict | None,
              first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else {"content": piece}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            body = self._base("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish,
                      "stop_reason": None}
            body = self._base("text_completion")
        body["choices"] = [choice]
        if use is not None:
            body["usage"] = use
        body["simulator"] = SIMULATOR_ID
        return body

    def usage_chunk(self, use: dict) -> dict:
        body = self._base("chat.completion.chunk" if self.chat else "text_completion")
        body.update(choices=[], usage=use, simulator=SIMULATOR_ID)
        return body
