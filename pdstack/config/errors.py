"""Errors of the config layer: every problem of a stack's config, each tied to the key a user would fix."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    path: str  # as written with `pulumi config set --path`, e.g. "pdstack:prefill[0].devices"
    message: str  # what is wrong and what would be valid

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    """A stack's config is invalid; carries all of its issues so one `pulumi up` shows every mistake."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class InvalidValue(ValueError):
    """Raised by the value parsers (devices, image references); the caller adds the key path."""
