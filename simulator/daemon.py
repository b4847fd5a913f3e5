"""Background daemons (Ray stand-in, proxy) with pid files.

The launcher waits on a pipe until the daemon says it is serving (or why it is not), so the
command's exit status tells the caller whether the bind worked, as `nginx` and `ray start` do.
"""

import os
import select
import signal
import subprocess
import sys
import time

READY_FD_ENV = "PDSIM_READY_FD"


def spawn(argv: list[str], log_path: str, env: dict | None = None,
          wait: float = 10.0) -> tuple[bool, str, int]:
    """Start argv detached; returns (ok, message, pid). ok is False when the daemon
    reported an error or died before reporting."""
    r, w = os.pipe()
    child_env = dict(os.environ if env is None else env)
    child_env[READY_FD_ENV] = str(w)
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, pass_fds=(w,), env=child_env,
                                start_new_session=True, close_fds=True)
    os.close(w)
    deadline = time.monotonic() + wait
    buf = b""
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 4096)
            if not chunk:
                break
            buf += chunk
            if b"\n" in buf:
                break
    finally:
        os.close(r)
    line = buf.decode(errors="replace").strip()
    if line.startswith("ok"):
        return True, line[2:].strip(), proc.pid
    if line.startswith("error"):
        return False, line[5:].strip(), proc.pid
    rc = proc.poll()
    if rc is not None:
        return False, f"exited with status {rc} before it was ready (see {log_path})", proc.pid
    # Still starting: the caller decides whether that is acceptable.
    return True, "", proc.pid


def notify(ok: bool, message: str = "") -> None:
    """Tell the launcher (if any) how start-up went. Safe to call more than once."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), (("ok " if ok else "error ") + message.replace("\n", " ") + "\n").encode())
        os.close(int(fd))
    except OSError:
        pass


def write_pid(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def is_ours(pid: int, marker: str) -> bool:
    """True when pid is alive and its command line names marker: a pid file can outlive
    its process and the number may since belong to something else."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\x00", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmd


def alive_from_pidfile(path: str, marker: str) -> int | None:
    pid = read_pid(path)
    return pid if pid and is_ours(pid, marker) else None


def stop(pid: int, force: bool = False, wait: float = 10.0) -> bool:
    """Signal pid and wait for it to go; True when it is gone."""
    try:
        os.kill(pid, signal.SIGKILL if force else signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.05)
    if not force:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return not _running(pid)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def python_argv(module: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", module, *args]
