"""Helpers shared by the tests and the benchmarks; the product packages never import this.

    harness.processes   ports, `rlhf serve` / the broker / `rlhf up` on ports of their own, wait_until
    harness.kafka       read a topic from the beginning, announce adapters
    harness.metrics     one value out of a Prometheus text page
    harness.user        the simulated user: a hidden preference, two answers, feedback over HTTP
    harness.loras       LoRA adapters for the tiny model (random, trained, answering a marker word)
    harness.browser     Debian's Chromium for Playwright
"""
