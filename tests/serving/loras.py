"""LoRA adapters for the tiny model, made with peft, and small Kafka helpers for the adapter tests.

    make_lora(model_path, out_dir, seed)            random weights: answers differ from the base model
    train_lora(model_path, out_dir, examples)       a few SFT steps on (messages, answer) pairs
    announce(bootstrap, event) / read_topic(bootstrap, topic)
"""

from __future__ import annotations

import time
from pathlib import Path

from feedback.schema import encode, parse_event


def make_lora(model_path: Path, out: Path, seed: int, rank: int = 8) -> Path:
    """A PEFT LoRA on q_proj/v_proj with random (not zero) B, so it changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)  # adapter_model.safetensors + adapter_config.json (+ README.md)
    return out


def train_lora(model_path: Path, out: Path, examples: list[tuple[list[dict], str]], *, steps: int = 60,
               lr: float = 3e-3, seed: int = 0, target_modules=("q_proj", "v_proj")) -> Path:
    """Supervised steps on liked answers: loss on the answer tokens only (the prompt is context)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path),
                           LoraConfig(r=8, lora_alpha=16, target_modules=list(target_modules), lora_dropout=0.0))
    rows = []
    for messages, answer in examples:
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((p_ids, a_ids))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = [rows[i] for i in torch.randint(len(rows), (min(8, len(rows)),), generator=g).tolist()]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), width), tok.eos_token_id)  # (B, T)
        labels = torch.full((len(batch), width), -100)  # (B, T); -100: no loss (prompt, padding)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, (p, a) in enumerate(batch):
            ids[b, :len(p) + len(a)] = torch.tensor(p + a)
            labels[b, len(p):len(p) + len(a)] = torch.tensor(a)
            mask[b, :len(p) + len(a)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    return out


def announce(bootstrap: str, *events) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for ev in events:
            producer.send("rlhf.adapters", key=ev.key(), value=encode(ev)).get(timeout=15)
    finally:
        producer.close(timeout=5)


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list:
    """Every event on `topic` right now, read with an independent consumer (no group)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest", fetch_max_wait_ms=100)
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out = []
        deadline = time.monotonic() + timeout_s
        while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out += [parse_event(r.value) for r in recs]
        return out
    finally:
        c.close()


def wait_until(check, timeout_s: float, interval_s: float = 0.1, what: str = "condition"):
    """Poll `check()` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what} not met within {timeout_s:.0f} s (last: {last!r})")
