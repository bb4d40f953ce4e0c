"""Checks on a PEFT adapter a person brings (`rlhf adapters publish PATH`) before it enters the store:
it must be a LoRA that serving can load on this base model, with safetensors weights only."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header (no torch needed)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path.name} is not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"{path.name} is not a safetensors file")
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def check_peft_adapter(path: Path, model_path: Path, max_rank: int) -> dict:
    """Refuse anything serving could not load on this base model; returns the adapter config.

    Checks: a LoRA adapter_config.json; weights only as safetensors; rank within the engine's
    limit; every LoRA tensor belongs to a linear layer of the base model with matching shapes
    (the model is built on the meta device, so no weights are read)."""
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder (expected a PEFT adapter folder from save_pretrained)")
    cfg_path = path / "adapter_config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{path} has no adapter_config.json")
    config = json.loads(cfg_path.read_text())
    if config.get("peft_type", "LORA").upper() != "LORA":
        raise ValueError(f"only LoRA adapters are supported, not {config.get('peft_type')}")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
        hint = f" (found {', '.join(pickled)}: pickled weights are refused; save with safe_serialization=True)" \
            if pickled else ""
        raise ValueError(f"{path} has no .safetensors weights{hint}")
    rank = int(config.get("r", 0))
    if not 0 < rank <= max_rank:
        raise ValueError(f"LoRA rank r={rank} is outside 1..{max_rank} (RLHF_MAX_LORA_RANK)")

    # torch and transformers: heavy, and only publishing a brought-in adapter needs them
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    modules = dict(model.named_modules())
    seen = 0
    for wfile in weights:
        for name, shape in safetensors_shapes(wfile).items():
            m = re.match(r"^base_model\.model\.(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight$", name)
            if not m:
                raise ValueError(f"{wfile.name}: {name} is not a LoRA weight of a linear layer")
            module = modules.get(m.group(1))
            if not isinstance(module, torch.nn.Linear):
                raise ValueError(f"{name}: the base model has no linear layer {m.group(1)!r} (another base model?)")
            want = [rank, module.in_features] if m.group(2) == "lora_A" else [module.out_features, rank]
            if list(shape) != want:
                raise ValueError(f"{name}: shape {shape} does not fit the base model's {m.group(1)} "
                                 f"(expected {want}; another base model?)")
            seen += 1
    if not seen:
        raise ValueError(f"{path}: no LoRA weights found")
    return config


def adapter_name_for(path: Path) -> str:
    """The store name of a brought-in adapter: its folder name, cleaned (`my-adapter@v1`)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", path.resolve().name.lower()).strip("-_")
    if not name or not name[0].isalpha():
        name = "user-" + name if name else "user"
    return name[:48]
