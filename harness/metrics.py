"""Values out of a Prometheus text page (what GET /metrics answers)."""

from __future__ import annotations

import httpx


def scrape(url: str) -> str:
    """The /metrics page of the server at `url`."""
    return httpx.get(url + "/metrics", timeout=10).text


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    """Value of one sample (`labels` like 'policy="candidate"', or the labels written into `name`)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head == name or (labels and head == f"{name}{{{labels}}}"):
            return float(value)
    return None


def metric_total(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_set = head.partition("{")
        if sample == name and labels in label_set:
            total += float(value)
    return total
