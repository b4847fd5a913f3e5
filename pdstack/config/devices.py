"""NPU device lists: "0-15", "0,1,2", "0-3,8-11" or [0, 1, 2] → a sorted tuple of unique ids."""
from __future__ import annotations

import re
from typing import Any

from .errors import InvalidValue
from .reader import as_int, kind, show

MAX_DEVICE = 63  # well above the 16 dies of an A3 node; catches typos like 100 for 10
HINT = 'write a range "0-15", a list "0,1,2" or [0, 1, 2]'

_ITEM = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")


def parse_devices(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        ids = _from_text(value)
    elif isinstance(value, (list, tuple)):
        ids = _from_list(value)
    elif as_int(value) is not None:
        ids = _from_list([value])  # a YAML `devices: 3` is one device
    else:
        raise InvalidValue(f"expected a string or a list of device ids, got {kind(value)}; {HINT}")
    if not ids:
        raise InvalidValue(f"{show(value)} lists no device; {HINT}")
    seen: set[int] = set()
    for device in ids:
        if device in seen:
            raise InvalidValue(f"{show(value)} lists device {device} twice; {HINT}")
        seen.add(device)
    return tuple(sorted(ids))


def format_devices(devices: tuple[int, ...] | list[int]) -> str:
    """The shortest "0-3,8-11" spelling of sorted unique ids, for messages."""
    parts: list[str] = []
    ordered = sorted(devices)
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = i
    return ",".join(parts)


def _check_id(text: str, whole: str) -> int:
    # Bounded before int() so "0-99999999999" neither expands nor hits int-size limits.
    digits = text.lstrip("0") or "0"
    if len(digits) > 2 or int(digits) > MAX_DEVICE:
        shown = digits if len(digits) <= 10 else digits[:10] + "…"
        raise InvalidValue(f"{show(whole)}: device {shown} is out of range 0..{MAX_DEVICE}; {HINT}")
    return int(digits)


def _from_text(text: str) -> list[int]:
    if not text.strip():
        raise InvalidValue(f"{show(text)} lists no device; {HINT}")
    ids: list[int] = []
    for part in text.split(","):
        match = _ITEM.fullmatch(part)
        if match is None:
            what = "an empty item" if not part.strip() else f"{show(part.strip())}, which is neither an id nor a range"
            raise InvalidValue(f"{show(text)} has {what}; {HINT}")
        first = _check_id(match.group(1), text)
        last = first if match.group(2) is None else _check_id(match.group(2), text)
        if last < first:
            raise InvalidValue(f"{show(text)} has the reversed range {first}-{last}; write {last}-{first}")
        ids.extend(range(first, last + 1))
    return ids


def _from_list(values: list[Any] | tuple[Any, ...]) -> list[int]:
    ids: list[int] = []
    for value in values:
        device = as_int(value)
        if device is None:
            raise InvalidValue(f"{show(list(values))} has {kind(value)}, which is not a device id; {HINT}")
        if not 0 <= device <= MAX_DEVICE:
            raise InvalidValue(f"{show(list(values))}: device {show(value)} is out of range 0..{MAX_DEVICE}; {HINT}")
        ids.append(device)
    return ids
