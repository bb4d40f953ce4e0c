"""What /proc says about processes and sockets (Linux only).

    descendants(pid)            every descendant process
    cmdline(pid)                a process's command line
    environ(pid)                a process's environment
    thread_cpus(pid)            the cores each of a process's threads may run on
    listening_here(pid, port)   whether `pid` or a descendant holds the socket listening on `port`
"""

from __future__ import annotations

import os
from pathlib import Path


def descendants(pid: int) -> set[int]:
    """Every descendant process of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if b"=" in item)


def thread_cpus(pid: int) -> dict[int, set[int]]:
    """thread id -> the cores it may run on (its affinity)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out[int(task.name)] = os.sched_getaffinity(int(task.name))
        except OSError:
            pass
    return out


def listening_sockets(port: int) -> set[str]:
    """The sockets listening on TCP `port`, as /proc/PID/fd links name them ("socket:[inode]")."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()  # sl local_address rem_address st ... uid timeout inode
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    return inodes


def listening_here(pid: int, port: int) -> bool:
    """Whether `pid` or one of its descendants holds the socket listening on TCP `port`."""
    inodes = listening_sockets(port)
    for p in {pid} | descendants(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{p}/fd/{fd}") in inodes:
                    return True
            except OSError:
                pass
    return False
