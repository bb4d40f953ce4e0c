"""Polling until something holds.

    poll(check, timeout_s)         poll until truthy or the time is up; the last value is returned
    wait_until(check, timeout_s)   the same, but the time running out is an error
    answers_200(url)               whether GET `url` answers 200 right now
"""

from __future__ import annotations

import time

import httpx


def poll(check, timeout_s: float, interval_s: float = 0.1):
    """Call `check()` until it returns something truthy or `timeout_s` passed; its last value is returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = check()
        if last or time.monotonic() >= deadline:
            return last
        time.sleep(interval_s)


def wait_until(check, timeout_s: float, interval_s: float = 0.1, what: str = "condition"):
    """Poll `check()` until it returns something truthy; that value is returned."""
    last = poll(check, timeout_s, interval_s)
    if not last:
        raise AssertionError(f"{what} not met within {timeout_s:.0f} s (last: {last!r})")
    return last


def answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
