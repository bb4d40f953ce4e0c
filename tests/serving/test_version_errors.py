"""Serving counts the answers each version lost to an error (rlhf_completion_errors_total{adapter}),
beside rlhf_completions_total: the error rate per version the dashboard plots.

The fault is the engine core dying under a request. On a real replica that also ends the process
(tests/serving/test_engine_death.py), so its /metrics can no longer be read: here serving's own
ChatService runs over an engine whose generation raises EngineStopped, the exception the real
engine raises then, a stand-in for a fault that cannot be produced otherwise and still be counted."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from adapters.router import LoadedAdapter
from serving.engine import EngineStopped
from tests.serving.test_first_answer import chat_service, prepare


def errors(version: str) -> float:
    return REGISTRY.get_sample_value("rlhf_completion_errors_total", {"adapter": version}) or 0.0


async def engine_core_died(*args, **kwargs):
    raise EngineStopped("the inference engine of this replica stopped; it is restarting, retry shortly")
    yield  # an async generator, as Engine.generate


async def chunks(stream) -> list[str]:
    return [c async for c in stream]


def test_answers_lost_to_an_error_are_counted_for_the_version_that_was_answering(tiny_model_path, tmp_path):
    service = chat_service(tiny_model_path)
    service.router.loaded["policy@v1"] = LoadedAdapter("policy@v1", 1, tmp_path)
    service.router.active = "policy@v1"
    service.engine.generate = engine_core_died
    before = {v: errors(v) for v in ("policy@v1", "base")}

    prep = prepare(service, n=2)
    assert prep.adapter.version == "policy@v1"
    with pytest.raises(EngineStopped):
        asyncio.run(service.complete(prep))
    assert errors("policy@v1") == before["policy@v1"] + 2  # both choices lost

    sent = asyncio.run(chunks(service.stream(prepare(service, stream=True))))
    assert "engine_stopped" in sent[-1]  # the stream ends with an error event
    assert errors("policy@v1") == before["policy@v1"] + 3

    with pytest.raises(EngineStopped):  # the base model, asked for by name: counted as `base`
        asyncio.run(service.complete(prepare(service, model="tiny")))
    assert (errors("base"), errors("policy@v1")) == (before["base"] + 1, before["policy@v1"] + 3)
