"""`rlhf model prepare`: the tiny model and the default Gemma 3 270M, built offline and cached, and the
model card (preamble, stop strings, sampling defaults) serving applies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.models.sizing import context_length

ROOT = Path(__file__).resolve().parents[1]


def rlhf(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "rlhf.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_prepare_tiny_is_idempotent_and_prints_folder_last(tiny_model_path):
    r1 = rlhf("model", "prepare", "--model", "tiny")
    r2 = rlhf("model", "prepare", "--model", "tiny")
    assert r1.returncode == 0, r1.stderr
    last = r1.stdout.strip().splitlines()[-1]
    assert Path(last) == tiny_model_path
    assert r2.stdout.strip().splitlines()[-1] == last
    assert (Path(last) / "model.safetensors").exists()


def test_tiny_model_is_small_llama_with_chat_template(tiny_model_path):
    from transformers import AutoConfig, AutoTokenizer  # heavy: only the tests that read a model load it

    cfg = AutoConfig.from_pretrained(tiny_model_path)
    assert cfg.model_type == "llama"
    size = sum(p.stat().st_size for p in tiny_model_path.iterdir())
    assert size < 10 * 2**20
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith(tok.bos_token) and text.endswith("<|assistant|>\n")
    assert tok.eos_token_id != tok.pad_token_id


def test_context_length_is_capped_at_the_models_positions(tiny_model_path):
    assert context_length(tiny_model_path, 2048) == 1024  # the default setting on the tiny model
    assert context_length(tiny_model_path, 512) == 512


def test_unknown_model_is_a_clear_cli_error(tmp_path):
    r = rlhf("model", "prepare", "--model", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert "neither `tiny`" in r.stderr and "Traceback" not in r.stderr


def test_prepare_default_model_answers_paris():
    """The default model: converted from the PyPI GGUF chunks, <bos> fixed, greedy answer contains Paris."""
    r = rlhf("model", "prepare")
    assert r.returncode == 0, r.stderr[-3000:]
    folder = Path(r.stdout.strip().splitlines()[-1])
    assert (folder / "config.json").exists()
    assert any(folder.glob("*.safetensors"))
    assert "Paris" in r.stderr  # the coherence check's greedy answer
    from transformers import AutoTokenizer  # heavy: only the tests that read a model load it

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok("hello")["input_ids"][0] == tok.bos_token_id
    # the starting adapter is built by default (cached after the first prepare): its folder is named
    starting = [line for line in r.stderr.splitlines() if line.startswith("starting adapter")]
    assert starting, r.stderr[-2000:]
    built = Path(starting[-1].rsplit(": ", 1)[1])
    assert (built / "adapter_config.json").is_file() and (built / "starting_adapter.json").is_file()


# ------------------------------------------------------------------------------ the model card
def test_the_default_models_card_has_a_preamble_stops_and_sampling_defaults():
    from rlhf.models.card import check_preamble, model_card, sampling_defaults
    from rlhf.models.registry import resolve_model

    card = model_card(resolve_model("gemma-3-270m"))
    assert len(check_preamble(card["preamble"])) >= 6
    assert {"\nQuestion:", "\nAnswer:"} <= set(card["stop"])
    assert 0 < sampling_defaults(card)["temperature"] < 1 and 0 < sampling_defaults(card)["top_p"] <= 1


def test_the_operator_replaces_or_turns_off_the_preamble(tmp_path):
    from rlhf.models.card import PreambleError, preamble_messages, with_preamble

    card = {"preamble": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    assert preamble_messages(card, "") == card["preamble"]
    assert preamble_messages(card, "none") == []
    own = [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima."}]
    (tmp_path / "p.json").write_text(json.dumps(own))
    assert preamble_messages(card, str(tmp_path / "p.json")) == own
    for bad in ('{"role": "user"}', '[{"role": "assistant", "content": "x"}]', '[{"role": "user", "content": "x"}]',
                "not json"):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(PreambleError):
            preamble_messages(card, str(tmp_path / "bad.json"))
    with pytest.raises(PreambleError, match="cannot read"):
        preamble_messages(card, str(tmp_path / "missing.json"))
    # the preamble goes after the system prompt and before the conversation
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]
    assert with_preamble(conv, own) == [conv[0], *own, conv[1]]


def test_sampling_defaults_are_openais_where_the_card_says_nothing():
    from rlhf.models.card import sampling_defaults

    assert sampling_defaults({}) == {"temperature": 1.0, "top_p": 1.0}
    assert sampling_defaults({"sampling": {"temperature": 0.2}}) == {"temperature": 0.2, "top_p": 1.0}
