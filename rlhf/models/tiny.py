"""The offline `tiny` model: a ~1 MB Llama with its own byte-level BPE tokenizer and chat template.

It is trained for a few hundred steps on generated dialogues (rlhf/models/dialogues.py), so it
answers in word-like sentences and ends its turns with EOS: tests and the learner need a policy
whose behaviour can move. Built once, in about a minute on a CPU.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from rlhf.models.cache import new_build_dir, publish_build
from rlhf.models.dialogues import tiny_dialogues

log = logging.getLogger(__name__)

TINY_VERSION = "tiny-v1"  # the cache folder; bump when the recipe below changes, so caches rebuild

CHAT_TEMPLATE_TINY = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny(final: Path, steps: int = 400, seed: int = 0) -> Path:
    # Heavy, and only this one-time build needs them: looking the model up must stay light.
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    log.info("building the tiny model in %s (one-time, about a minute)", final)
    tmp = new_build_dir(final)
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
    publish_build(tmp, final)
    return final
