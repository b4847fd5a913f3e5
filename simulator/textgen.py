"""Tokens and text for the simulated model.

No model runs: tokens are words, token ids are hashes, and the answer is chosen by hashing
the prompt, so greedy decoding (temperature 0) gives the same text on every engine, with or
without a prefill/decode split. blake2b rather than hash(): PYTHONHASHSEED differs per
process and the answer must not.
"""

import hashlib
import random
import re

VOCAB_SIZE = 129280  # DeepSeek-V3's vocabulary size, so ids look plausible
_PIECE = re.compile(r"\w+|[^\w\s]")

_WORDS = (
    "the a model server token cache prefill decode request answer simple quiet river stone "
    "light signal cluster node device memory batch stream value system network latency "
    "window green blue morning evening garden road city window paper music voice small large "
    "fast slow bright calm clear open steady gentle ready careful useful honest good well "
    "fine today always often sometimes perhaps indeed really quite very more less still "
    "and or but so because while when where which that this these those there here "
    "is are was were be being have has had do does did can could will would should may "
    "i you we they it he she me us them my your our their its "
    "think know see say make take give find keep help show try ask feel seem leave call "
    "time day year way thing world life hand part place case point group number fact"
).split()


def _h(*parts) -> int:
    m = hashlib.blake2b(digest_size=8)
    for p in parts:
        m.update(str(p).encode())
        m.update(b"\x00")
    return int.from_bytes(m.digest(), "big")


def tokenize(text: str) -> list[int]:
    return [_h("tok", p) % VOCAB_SIZE for p in _PIECE.findall(text)]


def chat_prompt(messages: list) -> str:
    """A fixed chat template; only its determinism matters."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        out.append(f"<|{m.get('role', 'user')}|>\n{content or ''}\n")
    out.append("<|assistant|>\n")
    return "".join(out)


def kv_checksum(token_ids: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, token_ids)).encode()).hexdigest()


class Sampler:
    """Yields the text pieces of one answer."""

    def __init__(self, prompt_ids: list[int], temperature: float, seed=None):
        key = ",".join(map(str, prompt_ids))
        self.natural_len = 12 + _h("len", key) % 53
        if temperature and temperature > 0:
            # Sampling: random unless the client pins a seed, as with a real engine.
            rng = random.Random(_h("seed", seed, key)) if seed is not None else random.Random()
            self._pick = lambda i: rng.randrange(1 << 62)
        else:
            self._pick = lambda i: _h("greedy", key, i)

    def piece(self, i: int) -> str:
        r = self._pick(i)
        word = _WORDS[r % len(_WORDS)]
        if i == 0 or (r >> 20) % 9 == 0 and i % 7 == 0:
            word = word.capitalize()
        if (r >> 8) % 11 == 0 and i > 0:
            word += ","
        if i == self.natural_len - 1:
            word += "."
        return word if i == 0 else " " + word


def generate(prompt_ids: list[int], max_tokens: int, temperature: float = 0.0, seed=None,
             stop: list[str] | None = None):
    """Yield (piece, finish_reason-or-None); the last item carries the finish reason."""
    s = Sampler(prompt_ids, temperature, seed)
    text = ""
    for i in range(max_tokens):
        piece = s.piece(i)
        text += piece
        hit = next((x for x in (stop or []) if x and x in text), None)
        if hit:
            # Trim the stop string and whatever followed it, like vLLM's detokenizer.
            keep = text.index(hit) - (len(text) - len(piece))
            yield piece[:max(keep, 0)], "stop"
            return
        if i == s.natural_len - 1:
            yield piece, "stop"
            return
        yield piece, ("length" if i == max_tokens - 1 else None)
