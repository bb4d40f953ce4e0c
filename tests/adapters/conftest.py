"""A PEFT-shaped folder (config, safetensors, the README peft writes) without torch: enough for the store;
a signing key pair and the trusted public keys of serving."""

from __future__ import annotations

import json

import pytest

from adapters.signing import load_trusted_keys, make_key_pair


@pytest.fixture
def peft_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "peft_type": "LORA"}))
    (src / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (src / "README.md").write_text("model card peft writes")
    return src



@pytest.fixture
def signing_key(tmp_path):
    """A key pair made as `rlhf adapters keygen DIR` makes it, in tmp_path/keys."""
    return make_key_pair(tmp_path / "keys")


@pytest.fixture
def trusted(signing_key, tmp_path):
    """The public keys serving would hold: the folder of *.pub files."""
    return load_trusted_keys(tmp_path / "keys")
