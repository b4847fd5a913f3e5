"""Server-style log lines (vLLM's "LEVEL MM-DD HH:MM:SS [where] message" shape)."""

import sys
import threading
import time

_lock = threading.Lock()


class Log:
    def __init__(self, where: str):
        self.where = where

    def _emit(self, level: str, msg: str, stream) -> None:
        stamp = time.strftime("%m-%d %H:%M:%S")
        line = f"{level} {stamp} [{self.where}] {msg}\n"
        # One lock for both streams: the launcher usually merges them into one log file.
        with _lock:
            stream.write(line)
            stream.flush()

    def info(self, msg: str) -> None:
        self._emit("INFO", msg, sys.stdout)

    def warning(self, msg: str) -> None:
        self._emit("WARNING", msg, sys.stdout)

    def error(self, msg: str) -> None:
        self._emit("ERROR", msg, sys.stderr)


def plain(line: str) -> None:
    """A line printed exactly as given (uvicorn's own lines, which readiness greps look for)."""
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
