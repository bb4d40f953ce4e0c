"""The default model (Gemma 3 270M base, converted from the PyPI GGUF) served by vLLM answers coherently."""

from __future__ import annotations

import pytest
from openai import OpenAI

from rlhf.models.registry import resolve_model


@pytest.fixture(scope="module")
def gemma_client(server_factory, broker):
    resolve_model("gemma-3-270m")  # prepared once (make test runs `rlhf model prepare` first)
    s = server_factory(RLHF_MODEL="gemma-3-270m", RLHF_MAX_MODEL_LEN=1024, RLHF_KAFKA_BOOTSTRAP=broker)
    return OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_default_model_answers_paris(gemma_client):
    r = gemma_client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0.0)
    text = r.choices[0].message.content
    assert "Paris" in text, text
    assert "Question:" not in text  # the model card's stop strings end the answer
    assert [m.id for m in gemma_client.models.list().data][0] == "gemma-3-270m"
