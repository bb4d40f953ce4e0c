"""Polling until something holds.

    wait_until(check, timeout_s)   poll until truthy; that value is returned
    answers_200(url)               whether GET `url` answers 200 right now
"""

from __future__ import annotations

import time

import httpx


def wait_until(check, timeout_s: float, interval_s: float = 0.1, what: str = "condition"):
    """Poll `check()` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what} not met within {timeout_s:.0f} s (last: {last!r})")


def answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
