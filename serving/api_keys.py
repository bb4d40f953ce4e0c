"""API keys: the clients that may call serving, one per line of the file RLHF_API_KEYS_FILE.

    rlhf keys add acme       # prints a new key once; the file keeps only its sha256
    rlhf keys list
    rlhf keys revoke acme    # serving answers 401 to that key within about a second

Each line is a JSON object:

    {"name": "acme", "sha256": "<hex of sha256(key)>", "created": "2026-01-01T00:00:00Z", "revoked": null}

A revoked key keeps its line, with the time it was revoked, so `list` shows the history; a name
may get a new key once its old one is revoked. The file is rewritten whole (temporary file, then
`os.replace`) under a lock beside it (`<file>.lock`), so serving never reads half a line and two
`rlhf keys` commands never lose each other's change.

Serving (`ApiKeys`) re-reads the file when it changes (serving/watched_file.py), so keys added
or revoked take effect without a restart; a line it cannot read is skipped with a warning, and a
missing file means no client is let in.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from serving.watched_file import WatchedFile

log = logging.getLogger(__name__)

KEY_PREFIX = "rlhf-"
# A client name becomes the first part of its users' names (`acme:alice`), so it has no colon.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyFileError(ValueError):
    """A refused change to the keys file, or a file that cannot be read; the message says which."""


def new_key() -> str:
    """A fresh key: 256 random bits, URL-safe, with a prefix that secret scanners can recognise."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The form a key is stored and looked up in.

    A plain sha256 is enough here, unlike for passwords: a key is 256 random bits, so nobody can
    guess it from its hash by trying candidates, which is what salts and slow hashes (bcrypt,
    argon2) defend against in low-entropy passwords. A fast hash also lets every request find
    its key with one dictionary lookup instead of a deliberately slow computation per request.
    Looking a hash up in a dict does not leak the key through timing: the caller controls the
    key, not its hash, and sha256 gives no way back from a hash prefix to a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def _utc_now(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))


@dataclass(frozen=True)
class KeyRecord:
    name: str
    sha256: str
    created: str
    revoked: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def line(self) -> str:
        return json.dumps(asdict(self), separators=(", ", ": "))

    @classmethod
    def parse(cls, line: str) -> "KeyRecord":
        obj = json.loads(line)
        if not isinstance(obj, dict) or set(obj) != {"name", "sha256", "created", "revoked"}:
            raise ValueError("expected the fields name, sha256, created, revoked")
        rec = cls(**obj)
        if not isinstance(rec.name, str) or not NAME.match(rec.name):
            raise ValueError(f"bad client name {rec.name!r}")
        if not isinstance(rec.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", rec.sha256):
            raise ValueError("sha256 is not 64 hex digits")
        if not isinstance(rec.created, str) or not (rec.revoked is None or isinstance(rec.revoked, str)):
            raise ValueError("created and revoked must be times")
        return rec


def _parse_lines(text: str, path: Path, strict: bool) -> list[KeyRecord]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(KeyRecord.parse(line))
        except (ValueError, TypeError) as e:
            if strict:
                raise KeyFileError(f"{path} line {number}: {e}") from None
            log.warning("API keys file %s line %d skipped: %s", path, number, e)
    return records


def read_records(path: str | Path) -> list[KeyRecord]:
    """Every line of the file (an absent file has none); KeyFileError names the first bad line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from None
    return _parse_lines(text, path, strict=True)


def _write_records(path: Path, records: list[KeyRecord]) -> None:
    """Replace the file atomically, readable by its owner only."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(r.line() + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Locked:
    """An exclusive lock on `<file>.lock` for the read-change-write of one command."""

    def __init__(self, path: Path):
        self.lock_path = path.with_name(path.name + ".lock")

    def __enter__(self):
        try:
            self.fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as e:
            raise KeyFileError(f"cannot create {self.lock_path}: {e.strerror}") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def add_key(path: str | Path, name: str, now: float | None = None) -> str:
    """Add a client and return its new key (the only time the key exists outside the caller)."""
    path = Path(path)
    if not NAME.match(name or ""):
        raise KeyFileError(f"bad client name {name!r}: 1-64 letters, digits, '.', '_' or '-', starting with a "
                           "letter or digit")
    if not path.parent.is_dir():
        raise KeyFileError(f"folder {path.parent} does not exist")
    with _Locked(path):
        records = read_records(path)
        if any(r.name == name and r.active for r in records):
            raise KeyFileError(f"client {name!r} already has an active key; revoke it first "
                               f"(`rlhf keys revoke {name}`) to give it a new one")
        key = new_key()
        _write_records(path, records + [KeyRecord(name=name, sha256=hash_key(key), created=_utc_now(now))])
    return key


def revoke_key(path: str | Path, name: str, now: float | None = None) -> int:
    """Revoke every active key of `name`; returns how many were revoked."""
    path = Path(path)
    with _Locked(path):
        records = read_records(path)
        if not any(r.name == name for r in records):
            raise KeyFileError(f"no client named {name!r} in {path}")
        active = [r for r in records if r.name == name and r.active]
        if not active:
            raise KeyFileError(f"client {name!r} has no active key (already revoked)")
        when = _utc_now(now)
        _write_records(path, [KeyRecord(r.name, r.sha256, r.created, when) if r in active else r for r in records])
    return len(active)


class ApiKeys:
    """Serving's view of the keys file: which client, if any, a presented key belongs to."""

    def __init__(self, path: str | Path, every_s: float = 1.0):
        self.path = Path(path)
        self._watched = WatchedFile(self.path, every_s)
        self._clients: dict[str, str] = {}  # sha256 of an active key -> client name
        if self._watched.changed():  # read now, so the start-up log says what the file holds
            self._reload()

    def _reload(self) -> None:
        try:
            text = self.path.read_text()
        except OSError as e:
            log.error("API keys file %s unreadable (%s): no client is let in until it is back", self.path, e)
            self._clients = {}
            return
        records = _parse_lines(text, self.path, strict=False)
        self._clients = {r.sha256: r.name for r in records if r.active}
        log.info("API keys file %s read: %d active keys", self.path, len(self._clients))

    def client_for(self, key: str) -> str | None:
        """The client whose active key this is; None for an unknown or revoked key."""
        if self._watched.changed():
            self._reload()
        return self._clients.get(hash_key(key))
