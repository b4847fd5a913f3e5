"""Docker image references: `[registry[:port]/]path[:tag][@digest]`, checked before any host pulls them.

The grammar is that of Docker's reference format: lowercase path components joined by `/`, each made
of alphanumerics with `.`, `_`, `__` or dashes between them; an optional first component is a
registry when it contains `.` or `:` or is `localhost`.
"""
from __future__ import annotations

import re

from .errors import InvalidValue
from .reader import show

EXAMPLE = "quay.io/ascend/vllm-ascend:v0.9.0-dsv3.2"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:]+\])(?::([0-9]{{1,5}}))?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
_MAX_NAME = 255


def check_image_ref(ref: str) -> None:
    """Raises InvalidValue saying what is wrong with `ref` and showing a valid reference."""
    problem = _problem(ref)
    if problem:
        raise InvalidValue(f"{show(ref)} is not a valid image reference: {problem}; a valid one looks like {EXAMPLE}")


def split(ref: str) -> tuple[str, str, str | None, str | None]:
    """(registry or "", repository path, tag, digest) of a reference."""
    name, _, digest = ref.partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    first, _, rest = name.partition("/")
    if rest and _is_registry(first):
        return first, rest, tag, digest or None
    return "", name, tag, digest or None


def _problem(ref: str) -> str | None:
    if not ref:
        return "it is empty"
    if any(c.isspace() for c in ref):
        return "it contains whitespace"
    if "@" in ref and not _DIGEST.fullmatch(ref.partition("@")[2]):
        return "the digest after '@' must be sha256: and 64 lowercase hex digits"
    registry, path, tag, _ = split(ref)
    if tag is not None and not _TAG.fullmatch(tag):
        return "the tag after ':' must be 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
    if len(registry) + 1 + len(path) > _MAX_NAME:
        return f"the name is longer than {_MAX_NAME} characters"
    return _name_problem(registry, path)


def _name_problem(registry: str, path: str) -> str | None:
    if registry:
        match = _REGISTRY.fullmatch(registry)
        if match is None:
            return f"the registry {show(registry)} is not a host name or host:port"
        if match.group(1) is not None and not 1 <= int(match.group(1)) <= 65535:
            return f"the registry port {match.group(1)} is not in 1..65535"
    for part in path.split("/"):
        if _COMPONENT.fullmatch(part):
            continue
        if _COMPONENT.fullmatch(part.lower()):
            return "the repository path must be lowercase"
        if not part:
            return "the repository path has an empty component"
        return (f"the path component {show(part)} must be lowercase letters and digits "
                "separated by '.', '_', '__' or '-'")
    return None


def _is_registry(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost" or first != first.lower()
