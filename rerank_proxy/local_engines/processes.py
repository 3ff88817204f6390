"""Start, check and stop engine processes (Linux).

Both engines refuse to run as root, so as root they run as an unprivileged system user
(`rerankproxy`, override with `RERANK_PROXY_ENGINE_USER`) via `runuser`; otherwise as ourselves.
Each node runs in its own session/process group: the start script, its Java launcher and the
server JVM are stopped together with one signal, and the node outlives the Python process that
started it (tests leave engines running for the next run).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_USER = "rerankproxy"
_user_lock = threading.Lock()


def engine_user() -> str | None:
    """The user engines run as: None means "ourselves" (we are not root)."""
    if os.geteuid() != 0:
        return None
    return os.environ.get("RERANK_PROXY_ENGINE_USER", DEFAULT_USER)


def ensure_user(name: str) -> None:
    """Create the unprivileged system user once (no home, no login shell)."""
    with _user_lock:
        if _user_exists(name):
            return
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True,
        )
        # 9: already exists (another process won the race).
        if result.returncode not in (0, 9) or not _user_exists(name):
            raise RuntimeError(f"useradd {name} failed: {result.stderr.strip()}")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def give_to_user(path: Path, user: str | None) -> None:
    """Make `path` (recursively) owned by the engine user, who must write data, logs and config."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def check_reachable(path: Path, user: str | None) -> None:
    """Fail early, with advice, if the engine user cannot enter every folder above `path`.

    Otherwise the engine dies with a confusing "access denied" deep in its start script.
    """
    if user is None:
        return
    uid = pwd.getpwnam(user).pw_uid
    for folder in [path, *path.parents]:
        info = folder.stat()
        if info.st_uid == uid or info.st_mode & 0o001:
            continue
        raise RuntimeError(
            f"the engine user {user!r} cannot enter {folder} (mode {oct(info.st_mode & 0o777)}); "
            f"set RERANK_PROXY_CACHE_DIR to a folder outside it"
        )


@dataclass(frozen=True, slots=True)
class Started:
    pid: int
    start_time: int


def start(command: list[str], env: dict[str, str], cwd: Path, console_log: Path, user: str | None) -> Started:
    """Start one node detached from us; its output goes to `console_log`."""
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    with open(console_log, "ab") as out:
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    # Reap it in the background if it dies while we still run, so it never lingers as a zombie
    # (a zombie still answers `kill(pid, 0)` and would look alive).
    threading.Thread(target=process.wait, daemon=True).start()
    return Started(process.pid, start_time(process.pid) or 0)


def start_time(pid: int) -> int | None:
    """Kernel start time of `pid` (clock ticks since boot), to tell a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def is_alive(pid: int, started: int) -> bool:
    """True if `pid` runs and is the very process we started (not a later one with its pid)."""
    return start_time(pid) == started


def group_alive(pid: int, started: int) -> bool:
    """True if anything of the node we started still runs, even if its leader died.

    A killed start script can leave the JVM behind, holding the ports. A group id cannot be
    reused while any member lives, so members of a group whose leader is gone are ours.
    """
    if is_alive(pid, started):
        return True
    return start_time(pid) is None and bool(group_members(pid))


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group: the start script, launcher and JVM."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stop_groups(pgids: list[int], grace_s: float = 30.0) -> None:
    """SIGTERM whole process groups (a graceful shutdown), then SIGKILL what is left after `grace_s`.

    All groups are signalled at once so the nodes of a cluster shut down in parallel.
    """
    for pgid in pgids:
        _signal_group(pgid, signal.SIGTERM)
    if _wait_gone(pgids, grace_s):
        return
    for pgid in pgids:
        _signal_group(pgid, signal.SIGKILL)
    _wait_gone(pgids, 10.0)


def _wait_gone(pgids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(group_members(pgid) for pgid in pgids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
