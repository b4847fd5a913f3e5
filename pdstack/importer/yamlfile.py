"""YAML files read with the line of every key and value, for messages that point into the user's file."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from .report import Source, fail


class YMap(dict):
    """A YAML mapping; `key_lines[k]` is the 1-based line of key k, `value_lines[k]` where its value starts."""

    def __init__(self, line: int):
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        self.value_lines: dict[Any, int] = {}
        self.block_scalars: set[Any] = set()  # keys whose value is a `|` or `>` scalar (text starts a line later)


class YList(list):
    def __init__(self, line: int):
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


@dataclass(frozen=True)
class Vaulted:
    """A `!vault` value: encrypted with ansible-vault, which pdstack cannot (and should not) decrypt."""
    line: int

    def __str__(self) -> str:
        return "<encrypted with ansible-vault>"


@dataclass
class Loaded:
    path: str  # as given, for messages
    doc: Any
    duplicates: list[tuple[Any, int, int]] = field(default_factory=list)  # key, first line, repeated line

    def at(self, line: int | None) -> Source:
        return Source(self.path, line)


class _Loader(yaml.SafeLoader):
    duplicates: list[tuple[Any, int, int]]


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping(loader: _Loader, node: yaml.MappingNode) -> YMap:
    loader.flatten_mapping(node)  # `<<: *anchor` merge keys
    out = YMap(_line(node))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a map key must be a plain value",
                                                    key_node.start_mark) from None
        if key in out:
            loader.duplicates.append((key, out.key_lines[key], _line(key_node)))
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = _line(key_node)
        out.value_lines[key] = _line(value_node)
        if isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">"):
            out.block_scalars.add(key)
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> YList:
    out = YList(_line(node))
    for item in node.value:
        out.append(loader.construct_object(item, deep=True))
        out.item_lines.append(_line(item))
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)
# Ansible's own tags: `!unsafe` marks a string Jinja must not expand; `!vault` an encrypted value.
_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
_Loader.add_constructor("!vault", lambda loader, node: Vaulted(_line(node)))


def load(path: str, what: str, hint: Callable[[str], str | None] | None = None) -> Loaded:
    """Reads and parses a YAML file; raises ImportFailed naming the file and line when it cannot.

    `hint(text)` may add advice to a syntax error (e.g. "this looks like an INI inventory")."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise fail(Source(path), f"no such file (expected the {what})") from None
    except IsADirectoryError:
        raise fail(Source(path), f"is a directory, not the {what} file") from None
    except UnicodeDecodeError:
        raise fail(Source(path), f"is not a text file (expected the {what} as YAML)") from None
    except OSError as err:
        raise fail(Source(path), f"cannot be read: {err.strerror}") from None
    loader = _Loader(text)
    loader.duplicates = []
    try:
        doc = loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = ": ".join(part for part in (err.context, err.problem) if part)
        advice = hint(text) if hint else None
        raise fail(Source(path, line), f"the {what} is not valid YAML ({problem})"
                                       + (f"; {advice}" if advice else "")) from None
    except yaml.YAMLError as err:
        raise fail(Source(path), f"the {what} is not valid YAML ({err})") from None
    finally:
        loader.dispose()
    return Loaded(path, doc, loader.duplicates)


def scalar_line(block: YMap, key: Any, offset: int) -> int:
    """The line of the character at `offset` in the string value of `block[key]`."""
    text = block[key]
    first = block.value_lines[key] + (1 if key in block.block_scalars else 0)
    return first + text[:offset].count("\n")
