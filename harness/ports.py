"""Ports for servers under test, picked where a port race is rare.

A port picked here is free when picked, but the server binds it a moment (or, for vLLM, half a
minute) later, and in between another process can take it: a client's outgoing connection, or
another test run's server. Ports are picked outside the kernel's ephemeral range, where outgoing
connections never land, which makes that rare; the starters (server.py, broker.py, up.py) check
that their own process listens and start again on a fresh port when the log says "address in use".

    pick_port()           a port nothing uses right now
    address_in_use(text)  whether a log says a bind failed because the port was taken
"""

from __future__ import annotations

import random
import re
import socket
from pathlib import Path

_rng = random.SystemRandom()  # not the `random` module: tests seed that, and runs must not pick alike
_IN_USE = re.compile(r"address (already )?in use|AddrInUse|port \d+ on \S+ is (already )?in use", re.I)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def pick_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to right now, outside the range the kernel hands outgoing connections."""
    low, high = _ephemeral_range()
    candidates = range(10000, low) if low > 11000 else range(high + 1, 65536)
    for _ in range(100 if len(candidates) else 0):
        port = _rng.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def address_in_use(text: str) -> bool:
    """Whether a log says a bind failed because the address was taken (uvicorn, Python, Tansu, `rlhf`)."""
    return _IN_USE.search(text) is not None
