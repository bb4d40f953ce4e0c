"""A full disk under the spool, for real: `rlhf serve --model tiny` with RLHF_DATA_DIR on a 1 MB tmpfs,
no broker (every event goes to the spool), and the tmpfs filled to the last byte by the test.

Feedback then answers 503 `storage_full` (never 500), a chat answer (streamed or not) is still
served, without feedback tokens, and a stream still ends with `data: [DONE]`; once space is
free again, feedback is accepted. Needs root to mount the tmpfs; skipped where it cannot be mounted.
"""

from __future__ import annotations

import errno
import json
import subprocess

import httpx
import pytest

from feedback import feedback_tokens

DEV_HMAC_KEY = "dev-only-insecure-key"  # development mode's built-in key (rlhf/settings.py)


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted here (needs root): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk) -> None:
    """Write to `disk` until the filesystem says it is full."""
    with open(disk / "filler", "wb", buffering=0) as f:  # unbuffered: nothing left to write at close
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    assert (disk / "filler").stat().st_size > 0


def thumbs_up(i: int) -> dict:
    rid = feedback_tokens.response_id("cd" * 16, i)
    return {"type": "thumbs", "response_id": rid, "feedback_token": feedback_tokens.sign(DEV_HMAC_KEY, rid, "fay"),
            "value": "up", "user": "fay"}


def test_a_full_disk_answers_503_storage_full_and_streams_still_end_cleanly(server_factory, small_disk, nowhere):
    server = server_factory(RLHF_KAFKA_BOOTSTRAP=nowhere, RLHF_DATA_DIR=small_disk)
    fill(small_disk)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        r = client.post("/v1/feedback", json=thumbs_up(0))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "storage_full" and int(r.headers["Retry-After"]) > 0

        chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        plain = client.post("/v1/chat/completions", json=chat)
        assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"] is not None
        assert plain.json()["rlhf"]["responses"] == []  # not recorded: no feedback tokens

        with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as stream:
            assert stream.status_code == 200
            lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        last = json.loads(lines[-2].removeprefix("data: "))
        assert last["rlhf"]["responses"] == [] and "error" not in last

        (small_disk / "filler").unlink()
        assert client.post("/v1/feedback", json=thumbs_up(1)).status_code == 202  # spooled again
