"""Signed control events: Ed25519 on `AdapterAnnounced` and `RoutingChanged`.

    make_key_pair(folder)            -> SigningKey   `rlhf adapters keygen DIR`: KEY_ID.key (private, 0600) + KEY_ID.pub
    load_signing_key(path)           -> SigningKey   RLHF_SIGNING_KEY_FILE (the learner, `rlhf adapters`)
    load_trusted_keys(path)          -> TrustedKeys  RLHF_TRUSTED_KEYS: a PEM file of public keys, or a folder of *.pub
    signed(event, key)               -> the event with `key_id` and `signature`
    signature_refusal(event, trusted) -> why the event must not be applied, or None (refusal_label: its kind)
    control_keys(settings)           -> ControlKeys  what this process signs with and trusts (dev mode: made once)

A key id is the first 16 hex digits of the sha256 of the raw public key, so an event names the
key that must verify it and the trusted set is chosen by id: several keys at once (rotation:
trust old and new, sign with the new, then drop the old). The signature covers
`feedback.schema.canonical_bytes(event, "signature")`, which includes `key_id`.

Development mode without key settings: one pair in RLHF_DATA_DIR/control-keys/ made on first
use (atomically, so serving and the learner started together by `rlhf up` agree on it); it
signs and is trusted. Outside development mode a process that needs keys and has none stops
with a message naming the setting and the command that makes them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from feedback.schema import ControlEvent, canonical_bytes

DEV_KEYS_DIR = "control-keys"
DEV_KEY_FILE = "dev-signing.key"
PEM_PUBLIC_BEGIN = b"-----BEGIN PUBLIC KEY-----"
PEM_PUBLIC_END = b"-----END PUBLIC KEY-----"


class SigningError(ValueError):
    """A key file that cannot be used, or key settings missing where they are needed."""


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private: Ed25519PrivateKey

    @property
    def public_pem(self) -> bytes:
        return _public_pem(self.private.public_key())


@dataclass
class TrustedKeys:
    """Public keys by key id; an event verifies only under the key its `key_id` names."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)

    def add(self, public: Ed25519PublicKey) -> None:
        self.keys[key_id_of(public)] = public

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class ControlKeys:
    signing: SigningKey | None  # None: this process cannot write control events
    trusted: TrustedKeys

    def sign(self, event: ControlEvent) -> ControlEvent:
        if self.signing is None:
            raise SigningError("no signing key: set RLHF_SIGNING_KEY_FILE (make one with `rlhf adapters keygen DIR`)")
        return signed(event, self.signing)


# ----------------------------------------------------------------------------- key files
def _private_pem(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _write_private(path: Path, private: Ed25519PrivateKey) -> bool:
    """Write a private key file (0600) unless `path` exists; True if this call wrote it. Atomic:
    two processes racing to make the same file end up with the same key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".key-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(_private_pem(private))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process made it first
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def make_key_pair(folder: Path | str) -> SigningKey:
    """A new key pair in `folder`: KEY_ID.key (private, mode 0600) and KEY_ID.pub (public, PEM)."""
    folder = Path(folder)
    private = Ed25519PrivateKey.generate()
    key = SigningKey(key_id_of(private.public_key()), private)
    if not _write_private(folder / f"{key.key_id}.key", private):
        raise SigningError(f"{folder / key.key_id}.key exists already")
    (folder / f"{key.key_id}.pub").write_bytes(key.public_pem)
    return key


def load_signing_key(path: Path | str) -> SigningKey:
    path = Path(path)
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise SigningError(f"cannot read the signing key {path}: {e.strerror or e}") from e
    except (ValueError, TypeError) as e:
        raise SigningError(f"{path} is not an unencrypted PEM private key: {e}") from e
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an Ed25519 key (make one with `rlhf adapters keygen DIR`)")
    return SigningKey(key_id_of(private.public_key()), private)


def _public_keys_in(path: Path) -> list[Ed25519PublicKey]:
    data = path.read_bytes()
    keys = []
    for chunk in data.split(PEM_PUBLIC_BEGIN)[1:]:
        pem = PEM_PUBLIC_BEGIN + chunk.split(PEM_PUBLIC_END)[0] + PEM_PUBLIC_END + b"\n"
        try:
            public = serialization.load_pem_public_key(pem)
        except ValueError as e:
            raise SigningError(f"{path}: not a PEM public key: {e}") from e
        if not isinstance(public, Ed25519PublicKey):
            raise SigningError(f"{path}: holds a key that is not Ed25519")
        keys.append(public)
    if not keys:
        raise SigningError(f"{path} holds no PEM public key")
    return keys


def load_trusted_keys(path: Path | str) -> TrustedKeys:
    """Public keys from a PEM file (one or more keys) or a folder of `*.pub` files (e.g. a mounted Secret)."""
    path = Path(path)
    trusted = TrustedKeys()
    try:
        files = sorted(p for p in path.iterdir() if p.name.endswith(".pub") and p.is_file()) if path.is_dir() \
            else [path]
        for f in files:
            for public in _public_keys_in(f):
                trusted.add(public)
    except OSError as e:
        raise SigningError(f"cannot read trusted keys from {path}: {e.strerror or e}") from e
    if not trusted.keys:
        raise SigningError(f"no trusted public keys in {path} (a folder needs KEY_ID.pub files)")
    return trusted


# ----------------------------------------------------------------------------- events
def signed(event: ControlEvent, key: SigningKey) -> ControlEvent:
    """A copy of `event` signed by `key` (same event id)."""
    unsigned = event.model_copy(update={"key_id": key.key_id, "signature": None})
    signature = key.private.sign(canonical_bytes(unsigned, "signature"))
    return unsigned.model_copy(update={"signature": base64.b64encode(signature).decode()})


def signature_refusal(event: ControlEvent, trusted: TrustedKeys) -> str | None:
    """Why a control event must not be applied (unsigned, unknown key, bad signature); None if it verifies."""
    if not event.signature or not event.key_id:
        return "unsigned: a control event needs a signature by a trusted key"
    public = trusted.keys.get(event.key_id)
    if public is None:
        return f"unknown key: {event.key_id!r} is not among the trusted keys (RLHF_TRUSTED_KEYS)"
    try:
        signature = base64.b64decode(event.signature, validate=True)
        public.verify(signature, canonical_bytes(event, "signature"))
    except (InvalidSignature, ValueError):
        return f"bad signature: does not verify under key {event.key_id}"
    return None


def refusal_label(reason: str) -> str:
    """`unsigned`, `unknown_key` or `bad_signature`: the metric label of a signature_refusal reason."""
    return reason.split(":")[0].replace(" ", "_")


# ----------------------------------------------------------------------------- settings
def dev_key(data_dir: Path | str) -> SigningKey:
    """The development key pair of a data dir, made on first use."""
    path = Path(data_dir) / DEV_KEYS_DIR / DEV_KEY_FILE
    if not path.exists():
        _write_private(path, Ed25519PrivateKey.generate())
    return load_signing_key(path)


def control_keys(settings, *, need_signing: bool = False) -> ControlKeys:
    """What this process signs with (RLHF_SIGNING_KEY_FILE) and trusts (RLHF_TRUSTED_KEYS); see the module doc.
    Raises SigningError with what to set when something needed is missing."""
    signing = load_signing_key(settings.signing_key_file) if settings.signing_key_file else None
    trusted = load_trusted_keys(settings.trusted_keys) if settings.trusted_keys else None
    if signing is None and trusted is None and settings.dev_mode:
        signing = dev_key(settings.data_dir)
    if trusted is None and signing is not None:
        trusted = TrustedKeys()
        trusted.add(signing.private.public_key())  # a process trusts what it signs
    if trusted is None:
        raise SigningError("RLHF_TRUSTED_KEYS is not set: routing events are signed, and this process needs the "
                           "public keys to check them (make a pair with `rlhf adapters keygen DIR`; give serving "
                           "DIR/KEY_ID.pub, the learner and operators DIR/KEY_ID.key as RLHF_SIGNING_KEY_FILE)")
    if need_signing and signing is None:
        raise SigningError("RLHF_SIGNING_KEY_FILE is not set: this process publishes signed routing events "
                           "(make a pair with `rlhf adapters keygen DIR`)")
    return ControlKeys(signing, trusted)
