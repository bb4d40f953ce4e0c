"""A PEFT-shaped folder (config, safetensors, the README peft writes) without torch: enough for the store."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def peft_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "peft_type": "LORA"}))
    (src / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (src / "README.md").write_text("model card peft writes")
    return src
