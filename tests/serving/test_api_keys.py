"""Pure tests of the API keys file (serving/api_keys.py) and of serving's view of it, which
follows changes to the file without a restart."""

from __future__ import annotations

import json

import pytest

from serving.api_keys import ApiKeys, KeyFileError, add_key, hash_key, read_records, revoke_key
from serving.watched_file import WatchedFile


def test_a_key_is_stored_only_as_its_hash(tmp_path):
    path = tmp_path / "keys"
    key = add_key(path, "acme")
    text = path.read_text()
    assert key.startswith("rlhf-") and len(key) > 40
    assert key not in text and key[5:] not in text
    line = json.loads(text)
    assert line["name"] == "acme" and line["sha256"] == hash_key(key) and line["revoked"] is None
    assert path.stat().st_mode & 0o777 == 0o600
    assert add_key(path, "beta") != key  # each key is fresh


@pytest.mark.parametrize("name", ["", "a:b", "-x", "x y", "ä", "x" * 65])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(KeyFileError, match="bad client name"):
        add_key(tmp_path / "keys", name)
    assert not (tmp_path / "keys").exists()


def test_duplicate_and_unknown_names(tmp_path):
    path = tmp_path / "keys"
    add_key(path, "acme")
    with pytest.raises(KeyFileError, match="already has an active key"):
        add_key(path, "acme")
    with pytest.raises(KeyFileError, match="no client named 'nobody'"):
        revoke_key(path, "nobody")
    assert revoke_key(path, "acme") == 1
    with pytest.raises(KeyFileError, match="already revoked"):
        revoke_key(path, "acme")
    add_key(path, "acme")  # a revoked name may get a new key
    assert [(r.name, r.active) for r in read_records(path)] == [("acme", False), ("acme", True)]


def test_a_damaged_file_is_named_by_line(tmp_path):
    path = tmp_path / "keys"
    add_key(path, "acme")
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(KeyFileError, match="line 2"):
        add_key(path, "beta")


def test_serving_follows_adds_and_revocations_without_a_restart(tmp_path):
    path = tmp_path / "keys"
    path.touch()
    keys = ApiKeys(path, every_s=0)
    acme = add_key(path, "acme")
    assert keys.client_for(acme) == "acme"
    assert keys.client_for("rlhf-guessed") is None
    beta = add_key(path, "beta")
    revoke_key(path, "acme")
    assert keys.client_for(acme) is None and keys.client_for(beta) == "beta"
    path.write_text(path.read_text() + "{broken\n")  # a bad line is skipped, the rest still work
    assert keys.client_for(beta) == "beta"
    path.unlink()  # no file: nobody is let in
    assert keys.client_for(beta) is None


def test_the_file_is_looked_at_most_once_per_interval(tmp_path):
    now = [0.0]
    path = tmp_path / "f"
    path.write_text("a")
    watched = WatchedFile(path, every_s=1.0, clock=lambda: now[0])
    assert watched.changed()
    path.write_text("bb")
    assert not watched.changed()  # within the interval: not even looked at
    now[0] = 1.0
    assert watched.changed() and not watched.changed()
