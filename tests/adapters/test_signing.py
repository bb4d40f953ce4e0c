"""Keys and signatures of the control plane (adapters/signing.py), the HMAC on serving's events
(feedback/event_hmac.py), and `rlhf adapters keygen` as an operator runs it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters.signing import (SigningError, control_keys, dev_key, load_signing_key, load_trusted_keys, make_key_pair,
                              refusal_label, signature_refusal, signed)
from feedback.event_hmac import hmac_refusal, sealed
from feedback.schema import AdapterAnnounced, Interaction, Message, RoutingChanged, Thumbs, encode, parse_event
from rlhf.settings import Settings
from tests.conftest import ROOT


def test_a_signed_event_verifies_after_the_wire(signing_key, trusted):
    ev = signed(AdapterAnnounced(version="policy@v1", path="policy/v1", manifest_sha256="a" * 64), signing_key)
    assert ev.key_id == signing_key.key_id and ev.signature
    back = parse_event(encode(ev))  # as serving reads it from Kafka
    assert signature_refusal(back, trusted) is None


@pytest.mark.parametrize("field,value", [("version", "policy@v2"), ("manifest_sha256", "b" * 64), ("ts", 1.0),
                                         ("canary_fraction", 0.5), ("key_id", "0" * 16)])
def test_any_changed_field_breaks_the_signature(signing_key, trusted, field, value):
    ev = signed(AdapterAnnounced(version="policy@v1", path="policy/v1", manifest_sha256="a" * 64), signing_key)
    why = signature_refusal(ev.model_copy(update={field: value}), trusted)
    assert why is not None and refusal_label(why) in ("bad_signature", "unknown_key")


def test_unsigned_and_unknown_keys_are_refused_with_their_kind(signing_key, trusted, tmp_path):
    why = signature_refusal(RoutingChanged(action="rollback"), trusted)
    assert refusal_label(why) == "unsigned"
    stranger = make_key_pair(tmp_path / "stranger")
    why = signature_refusal(signed(RoutingChanged(action="rollback"), stranger), trusted)
    assert refusal_label(why) == "unknown_key" and stranger.key_id in why
    garbage = signed(RoutingChanged(action="rollback"), signing_key).model_copy(update={"signature": "!!"})
    assert refusal_label(signature_refusal(garbage, trusted)) == "bad_signature"


def test_rotation_two_trusted_keys_both_verify(tmp_path):
    """Trust old and new (one folder of *.pub, or one PEM file with both), sign with either."""
    old, new = make_key_pair(tmp_path / "keys"), make_key_pair(tmp_path / "keys")
    by_folder = load_trusted_keys(tmp_path / "keys")
    bundle = tmp_path / "trusted.pem"
    bundle.write_bytes(old.public_pem + new.public_pem)
    by_file = load_trusted_keys(bundle)
    for trusted in (by_folder, by_file):
        assert len(trusted) == 2
        for key in (old, new):
            assert signature_refusal(signed(RoutingChanged(action="rollback"), key), trusted) is None
    (tmp_path / "keys" / f"{old.key_id}.pub").unlink()  # rotation done: the old key is dropped
    assert refusal_label(signature_refusal(signed(RoutingChanged(action="rollback"), old),
                                           load_trusted_keys(tmp_path / "keys"))) == "unknown_key"


def test_key_files_are_private_and_bad_files_are_clear_errors(tmp_path):
    key = make_key_pair(tmp_path / "keys")
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / f"{key.key_id}.key").st_mode) == 0o600
    assert load_signing_key(tmp_path / "keys" / f"{key.key_id}.key").key_id == key.key_id
    with pytest.raises(SigningError, match="not an unencrypted PEM private key"):
        load_signing_key(tmp_path / "keys" / f"{key.key_id}.pub")
    with pytest.raises(SigningError, match="cannot read the signing key"):
        load_signing_key(tmp_path / "missing.key")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SigningError, match="no trusted public keys"):
        load_trusted_keys(tmp_path / "empty")


def test_outside_development_mode_missing_keys_stop_with_what_to_set(tmp_path):
    with pytest.raises(SigningError, match="RLHF_TRUSTED_KEYS is not set.*rlhf adapters keygen"):
        control_keys(Settings(dev_mode=False, data_dir=tmp_path))
    key = make_key_pair(tmp_path / "keys")
    serving = control_keys(Settings(dev_mode=False, data_dir=tmp_path, trusted_keys=str(tmp_path / "keys")))
    assert serving.signing is None and key.key_id in serving.trusted.keys  # public keys only
    with pytest.raises(SigningError, match="RLHF_SIGNING_KEY_FILE is not set"):
        control_keys(Settings(dev_mode=False, data_dir=tmp_path, trusted_keys=str(tmp_path / "keys")),
                     need_signing=True)
    assert not (tmp_path / "control-keys").exists()  # no development pair outside development mode


def test_development_mode_makes_one_pair_even_when_raced(tmp_path):
    """`rlhf up` starts serving and the learner at once: both must end up with the same key."""
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: dev_key(tmp_path).key_id, range(16)))
    assert len(ids) == 1
    keys = control_keys(Settings(dev_mode=True, data_dir=tmp_path))
    assert keys.signing.key_id in ids and keys.signing.key_id in keys.trusted.keys


def test_keygen_command_prints_the_key_id_last(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    r = subprocess.run([sys.executable, "-m", "rlhf.cli", "adapters", "keygen", str(tmp_path / "k")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    key_id = r.stdout.splitlines()[-1]
    assert load_signing_key(tmp_path / "k" / f"{key_id}.key").key_id == key_id
    assert key_id in load_trusted_keys(tmp_path / "k" / f"{key_id}.pub").keys


def _interaction() -> Interaction:
    return Interaction(response_id="r1", completion_id="c", conversation_id="c", user="u",
                       messages=[Message(role="user", content="hi")], response="hello", model="tiny")


def test_serving_events_carry_an_hmac_the_learner_checks():
    key = "k" * 32
    for ev in (_interaction(), Thumbs(response_id="r1", conversation_id="c", value="up")):
        wire = parse_event(encode(sealed(ev, key)))
        assert wire.event_id == ev.event_id and hmac_refusal(wire, key) is None
        assert "without an HMAC" in hmac_refusal(ev, key)
        assert "wrong HMAC" in hmac_refusal(wire, "other" * 8)
    forged = parse_event(encode(sealed(_interaction(), key))).model_copy(update={"response": "injected"})
    assert "wrong HMAC" in hmac_refusal(forged, key)
