"""What an import found: warnings and notes with the file and line they came from, and the errors that stop it.

A warning is a value pdstack does not carry over, or one the reference playbook would get wrong; a note
is a deliberate change the user should know about (a host merged, a default taken). Nothing in the
inventory or template is dropped without one of the two.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    """A place in an input file; `line` is 1-based, None for the file as a whole."""
    file: str
    line: int | None = None

    def __str__(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Finding:
    level: str  # "warning" | "note"
    source: Source
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.level}: {self.message}"


@dataclass(frozen=True)
class Problem:
    source: Source
    message: str

    def __str__(self) -> str:
        return f"{self.source}: error: {self.message}"


class ImportFailed(Exception):
    """The inputs cannot be imported; every problem names its file and line."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def fail(source: Source, message: str) -> ImportFailed:
    return ImportFailed([Problem(source, message)])


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def warn(self, source: Source, message: str) -> None:
        self._add(Finding("warning", source, message))

    def note(self, source: Source, message: str) -> None:
        self._add(Finding("note", source, message))

    def error(self, source: Source, message: str) -> None:
        problem = Problem(source, message)
        if problem not in self.problems:
            self.problems.append(problem)

    def _add(self, finding: Finding) -> None:
        if finding not in self.findings:  # a value shared by several hosts is reported once
            self.findings.append(finding)

    def check(self) -> None:
        """Raises ImportFailed when an error was recorded."""
        if self.problems:
            raise ImportFailed(self.problems)

    def ordered(self, files: list[str]) -> list[Finding]:
        """Findings by file (in the given order) and line."""
        def key(f: Finding) -> tuple[int, int]:
            rank = files.index(f.source.file) if f.source.file in files else len(files)
            return rank, f.source.line or 0
        return sorted(self.findings, key=key)

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "note"]
