"""A tiny evaluator for the Jinja of the reference inventories: `{{ global_port_base + port_offset.P + kv_rank }}`.

Supported: `{{ … }}` holding integers, quoted strings, variable names, dotted or subscript access
(`port_offset.P`, `port_offset['P']`, `hostvars['p0'].ansible_host`), `+`, `-`, parentheses and the
`int` / `string` filters. Anything else (other filters, tests, `{% %}` blocks, function calls) raises
Unsupported: the importer then reports the raw text and uses the value pdstack derives itself.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Callable

Lookup = Callable[[str], Any]  # variable name -> value; raises Unsupported when the name is undefined


class Unsupported(ValueError):
    """The text is a template this evaluator does not understand, or refers to an undefined name."""


_EXPR = re.compile(r"\{\{(.*?)\}\}", re.S)
_TOKEN = re.compile(r"""\s*(?:(?P<int>\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"""
                    r"""|(?P<str>'[^'\\]*'|"[^"\\]*")|(?P<op>[-+.()\[\]|]))""")


def has_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value or "{#" in value)


def render(text: str, lookup: Lookup) -> Any:
    """The value of a templated string: typed when it is one `{{ }}` alone, else the joined text."""
    if "{%" in text or "{#" in text:
        raise Unsupported("{% %} blocks and {# #} comments are not supported")
    parts = _EXPR.split(text)
    if len(parts) == 3 and parts[0] == "" and parts[2] == "":
        return _Parser(parts[1], lookup).parse()
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if "{{" in part or "}}" in part:
                raise Unsupported("unbalanced {{ }}")
            out.append(part)
        else:
            out.append(str(_Parser(part, lookup).parse()))
    return "".join(out)


class _Parser:
    def __init__(self, text: str, lookup: Lookup):
        self.tokens = self._tokenize(text)
        self.pos = 0
        self.lookup = lookup

    @staticmethod
    def _tokenize(text: str) -> list[tuple[str, str]]:
        tokens, pos = [], 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if match is None:
                raise Unsupported(f"cannot read {text[pos:].strip()!r}")
            kind = match.lastgroup
            assert kind is not None
            tokens.append((kind, match.group(kind)))
            pos = match.end()
        if not tokens:
            raise Unsupported("empty {{ }}")
        return tokens

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise Unsupported(f"expected {value!r}" if value else "unexpected end")
        self.pos += 1
        return token

    def parse(self) -> Any:
        value = self.expr()
        if self.peek() is not None:
            raise Unsupported(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return value

    def expr(self) -> Any:
        value = self.filtered()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            right = self.filtered()
            value = _add(value, right) if op == "+" else _sub(value, right)
        return value

    def filtered(self) -> Any:
        value = self.atom()
        while self.peek() == ("op", "|"):
            self.take()
            kind, name = self.take()
            if kind != "name" or name not in ("int", "string"):
                raise Unsupported(f"the filter {name!r} is not supported")
            value = _to_int(value) if name == "int" else str(value)
        return value

    def atom(self) -> Any:
        kind, text = self.take()
        if kind == "int":
            return int(text)
        if kind == "str":
            return text[1:-1]
        if (kind, text) == ("op", "("):
            value = self.expr()
            self.take(")")
            return value
        if (kind, text) == ("op", "-"):
            return _sub(0, self.atom())
        if kind != "name":
            raise Unsupported(f"unexpected {text!r}")
        if text in ("true", "false", "none", "True", "False", "None"):
            raise Unsupported(f"{text} is not supported")
        if self.peek() == ("op", "("):
            raise Unsupported(f"calling {text}() is not supported")
        value = self.lookup(text)
        path = text
        while self.peek() in (("op", "."), ("op", "[")):
            if self.take()[1] == ".":
                kind, key = self.take()
                if kind not in ("name", "int"):
                    raise Unsupported(f"unexpected {key!r} after '.'")
                key_value: Any = int(key) if kind == "int" else key
            else:
                kind, key = self.take()
                if kind not in ("str", "int"):
                    raise Unsupported("only quoted names or integers are supported inside [ ]")
                key_value = int(key) if kind == "int" else key[1:-1]
                self.take("]")
            if self.peek() == ("op", "("):
                raise Unsupported(f"calling {path}.{key_value}() is not supported")
            value = _item(value, key_value, path)
            path = f"{path}.{key_value}"
        return value


def _item(value: Any, key: Any, path: str) -> Any:
    getter = getattr(value, "item", None)
    if getter is not None:  # a lazily evaluated scope, e.g. hostvars['p0']
        return getter(key)
    if isinstance(value, Mapping):
        if key not in value:
            raise Unsupported(f"{path} has no {key!r}")
        return value[key]
    if isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
        return value[key]
    raise Unsupported(f"{path} has no {key!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise Unsupported("a boolean is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return 0  # Jinja's `int` filter turns anything else into 0


def _number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    return value if isinstance(value, int) else None


def _add(left: Any, right: Any) -> Any:
    if _number(left) is not None and _number(right) is not None:
        return left + right
    if isinstance(left, str) and isinstance(right, str):
        return left + right
    raise Unsupported(f"cannot add {left!r} and {right!r}")


def _sub(left: Any, right: Any) -> Any:
    if _number(left) is not None and _number(right) is not None:
        return left - right
    raise Unsupported(f"cannot subtract {right!r} from {left!r}")
