"""Helpers shared by the tests and the benchmarks; the product packages never import this.

    harness.ports       a port to start a server on, and "was it taken?" from a log
    harness.procfs      descendants, command lines and listening sockets of processes (/proc)
    harness.waiting     wait_until, answers_200
    harness.server      `rlhf serve` (or any HTTP server) ready on a port of its own
    harness.broker      the embedded broker on a port of its own
    harness.up          `rlhf up` on ports of its own
    harness.kafka       read a topic from the beginning, announce adapters
    harness.metrics     one value out of a Prometheus text page
    harness.user        the simulated user: a hidden preference, two answers, feedback over HTTP
    harness.loras       LoRA adapters for the tiny model (random, trained, answering a marker word)
    harness.browser     Debian's Chromium for Playwright
"""
