"""The adapter store: atomic versions, manifests, and verification that refuses anything altered."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from adapters.store import AdapterError, list_adapters, verify_adapter, write_adapter


def test_write_verify_list(tmp_path, peft_folder):
    store = tmp_path / "adapters"
    v1, rel1, sha1 = write_adapter(store, "policy", peft_folder, base_model="tiny", metrics={"kl": 1.5},
                                   feedback_count=40)
    v2, rel2, sha2 = write_adapter(store, "policy", peft_folder, parent=v1, base_model="tiny")
    assert (v1, rel1, v2, rel2) == ("policy@v1", "policy/v1", "policy@v2", "policy/v2")
    assert sorted(p.name for p in (store / rel1).iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "manifest.json"]  # no README, no temp folder left
    assert [p.name for p in (store / "policy").iterdir() if p.name.startswith(".")] == []
    assert hashlib.sha256((store / rel1 / "manifest.json").read_bytes()).hexdigest() == sha1

    m = verify_adapter(store, rel2, sha2, max_rank=16)
    assert m["version"] == "policy@v2" and m["parent"] == "policy@v1" and m["path"] == "policy/v2"
    assert set(m["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    m1 = verify_adapter(store, rel1, sha1)
    assert m1["metrics"] == {"kl": 1.5} and m1["feedback_count"] == 40 and m1["base_model"] == "tiny"

    listed = list_adapters(store)
    assert [a["version"] for a in listed] == ["policy@v1", "policy@v2"]
    assert listed[1]["manifest_sha256"] == sha2 and listed[1]["parent"] == "policy@v1"


@pytest.mark.parametrize("tamper", ["weights", "manifest", "extra_file", "pickle", "missing", "wrong_folder"])
def test_verify_refuses_tampering(tmp_path, peft_folder, tamper):
    store = tmp_path / "adapters"
    _, rel, sha = write_adapter(store, "policy", peft_folder)
    folder = store / rel
    if tamper == "weights":
        (folder / "adapter_model.safetensors").write_bytes(b"other weights")
    elif tamper == "manifest":
        m = json.loads((folder / "manifest.json").read_text())
        m["parent"] = "policy@v0"
        (folder / "manifest.json").write_text(json.dumps(m))
    elif tamper == "extra_file":
        (folder / "notes.txt").write_text("x")
    elif tamper == "pickle":
        (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    elif tamper == "missing":
        (folder / "adapter_model.safetensors").unlink()
    elif tamper == "wrong_folder":
        (store / "policy" / "v1").rename(store / "policy" / "v7")
        rel = "policy/v7"
    with pytest.raises(AdapterError):
        verify_adapter(store, rel, sha)


def test_verify_refuses_paths_outside_the_store_and_high_rank(tmp_path, peft_folder):
    store = tmp_path / "adapters"
    _, rel, sha = write_adapter(store, "policy", peft_folder)
    for bad in ("../policy/v1", "/etc", "policy/../../x", ""):
        with pytest.raises(AdapterError):
            verify_adapter(store, bad, sha)
    with pytest.raises(AdapterError):
        verify_adapter(store, rel, sha, max_rank=4)
    with pytest.raises(AdapterError):
        verify_adapter(store, rel, "0" * 64)


def test_write_refuses_pickled_weights_and_bad_names(tmp_path):
    src = tmp_path / "bin"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    (src / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterError):
        write_adapter(tmp_path / "adapters", "policy", src)
    with pytest.raises(AdapterError):
        write_adapter(tmp_path / "adapters", "../evil", src)


def test_adapter_store_imports_no_torch():
    code = "import sys, adapters.store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
