"""harness/waiting.py: poll gives back the first truthy value, or the last falsy one when time is up;
wait_until turns the second into an error."""

import pytest

from harness.waiting import poll, wait_until


def test_poll_returns_the_first_truthy_value():
    values = iter([0, None, "ready", "later"])
    assert poll(lambda: next(values), timeout_s=10, interval_s=0) == "ready"


def test_poll_checks_once_more_at_the_deadline_and_returns_the_last_falsy_value():
    calls = []
    assert poll(lambda: calls.append(1) or [], timeout_s=0, interval_s=0) == []
    assert len(calls) == 1  # checked once even with no time at all


def test_wait_until_raises_with_what_it_waited_for():
    with pytest.raises(AssertionError, match="the round not met within 0 s"):
        wait_until(lambda: False, timeout_s=0, interval_s=0, what="the round")
    assert wait_until(lambda: 7, timeout_s=0) == 7
