"""Typed reads of untrusted config values that record issues instead of raising.

Each read returns a usable value: the one configured if valid, else the default (or None when the key
is required). Parsing continues past a bad value so that one run reports every problem; the caller
raises ConfigError at the end if any issue was recorded, so fallback values never reach a spec.
"""
from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import ConfigIssue, InvalidValue

MISSING: Any = object()  # "no default": the key is required

_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MAX_SHOWN = 60


def show(value: Any) -> str:
    """A short, single-line rendering of a config value for a message (JSON-like, truncated)."""
    try:
        text = json.dumps(value, default=repr, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        # e.g. an int too long to print, or a self-referencing structure
        text = f"<{type(value).__name__}>"
    # Escaped so a message stays one line per issue whatever characters a value holds.
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 1] + "…"
    return text


def kind(value: Any) -> str:
    """What a value is, in the words of the YAML a user wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {show(value)}"
    if isinstance(value, str):
        return f"the string {show(value)}"
    if isinstance(value, (int, float)):
        return f"the number {show(value)}"
    if isinstance(value, Mapping):
        return "a map"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def child(path: str, key: str) -> str:
    # Keys that `--path` cannot take bare are quoted, which also keeps odd keys on one line.
    if _SIMPLE_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The valid key a typo most likely meant; case, `_` and `-` are ignored first (max_num_seqs → maxNumSeqs)."""
    def squash(s: str) -> str:
        return s.lower().replace("_", "").replace("-", "")

    for choice in choices:
        if squash(choice) == squash(word):
            return choice
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key_message(key: str, valid: Sequence[str]) -> str:
    hint = closest(key, valid)
    guess = f"did you mean {show(hint)}? " if hint else ""
    return f"unknown key {show(key)}; {guess}valid keys: {', '.join(valid)}"


def as_int(value: Any) -> int | None:
    """The integer a value stands for, or None; booleans are not integers, 8000.0 is."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


class Reader:
    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []

    def error(self, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(path, message))

    def block(self, value: Any, path: str, keys: Sequence[str], *,
              required: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        """The known keys of a map; reports a non-map, unknown keys and missing required keys.

        `required` maps each required key to an example of what to write."""
        if not isinstance(value, Mapping):
            self.error(path, f"expected a map with keys {', '.join(keys)}; got {kind(value)}")
            return None
        known: dict[str, Any] = {}
        for key, sub in value.items():
            if not isinstance(key, str):
                self.error(path, f"key {show(key)} is not a string; valid keys: {', '.join(keys)}")
            elif key not in keys:
                self.error(child(path, key), unknown_key_message(key, keys))
            else:
                known[key] = sub
        for key, example in (required or {}).items():
            if key not in known:
                self.error(child(path, key), f"is required, e.g. {example}")
        return known

    @staticmethod
    def present(block: Mapping[str, Any] | None, key: str, default: Any) -> tuple[bool, Any]:
        """(True, value) when the key is set; else (False, default). Missing required keys are reported by block()."""
        if block is None or key not in block:
            return False, (None if default is MISSING else default)
        return True, block[key]

    def integer(self, block: Mapping[str, Any] | None, key: str, path: str, *, default: Any = MISSING,
                lo: int = 1, hi: int = 2**31 - 1) -> int | None:
        found, value = self.present(block, key, default)
        if not found:
            return value
        number = as_int(value)
        if number is None or not lo <= number <= hi:
            got = kind(value) if number is None else show(value)
            self.error(child(path, key), f"expected a whole number from {lo} to {hi}; got {got}")
            return None if default is MISSING else default
        return number

    def fraction(self, block: Mapping[str, Any] | None, key: str, path: str, *, default: float) -> float:
        """A number in (0, 1]."""
        found, value = self.present(block, key, default)
        if not found:
            return value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not 0 < value <= 1:
            got = show(value) if ok else kind(value)
            self.error(child(path, key), f"expected a number greater than 0 and at most 1, like 0.9; got {got}")
            return default
        return float(value)

    def string(self, block: Mapping[str, Any] | None, key: str, path: str, *, default: Any = MISSING,
               check: Callable[[str], None] | None = None) -> str | None:
        """A string, optionally checked by `check`, which raises InvalidValue with what would be valid."""
        found, value = self.present(block, key, default)
        if not found:
            return value
        fallback = None if default is MISSING else default
        if not isinstance(value, str):
            self.error(child(path, key), f"expected a string; got {kind(value)}")
            return fallback
        if check is not None:
            try:
                check(value)
            except InvalidValue as bad:
                self.error(child(path, key), str(bad))
                return fallback
        return value

    def choice(self, block: Mapping[str, Any] | None, key: str, path: str, *, default: str,
               choices: Sequence[str]) -> str:
        def check(value: str) -> None:
            if value not in choices:
                hint = closest(value, choices)
                guess = f"; did you mean {show(hint)}?" if hint else ""
                raise InvalidValue(f"{show(value)} is not one of {', '.join(choices)}{guess}")

        result = self.string(block, key, path, default=default, check=check)
        return default if result is None else result
