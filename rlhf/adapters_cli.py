"""`rlhf adapters ...`: the adapter store and routing, from the command line.

    rlhf adapters list                      store contents and what every replica routes to
    rlhf adapters status                    live and offline figures per version, the leaderboard from blind votes
    rlhf adapters publish PATH [--canary F] bring your own PEFT adapter: validate, store, announce
    rlhf adapters activate VERSION          route all traffic to VERSION (`base`: no adapter)
    rlhf adapters rollback                  end a canary, or go back to the previous version
    rlhf adapters keygen DIR                a signing key pair: DIR/KEY_ID.key, DIR/KEY_ID.pub; prints KEY_ID last

Changes are events on `rlhf.adapters` (AdapterAnnounced, RoutingChanged), signed with
RLHF_SIGNING_KEY_FILE (adapters/signing.py), so every serving replica follows them; nothing
here talks to a replica except to confirm the switch when `RLHF_HOST:RLHF_PORT` serves.
Exit codes: 0 done, 1 refused or nothing to do (or no usable key), 2 unreachable.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

from adapters.announcements import announce, replay_state
from adapters.manifest import AdapterError
from adapters.peft_check import adapter_name_for, check_peft_adapter
from adapters.signing import SigningError, control_keys, make_key_pair
from adapters.store import list_adapters, verify_announced, write_adapter
from feedback.schema import AdapterAnnounced, RoutingChanged
from learner.leaderboard import format_leaderboard, leaderboard
from learner.live_evaluation import (
    format_table,
    offline_by_version,
    open_read_only,
    version_table,
)
from rlhf.models.registry import model_display_name, resolve_model
from rlhf.settings import get_settings


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- serving
def _confirm(settings, expect_active: str | None = "keep", expect_canary: str | None = "keep",
             wait_s: float = 10.0) -> None:
    """If a replica serves at RLHF_HOST:RLHF_PORT, wait until it routes as expected ("keep": any) and say so."""
    url = f"http://{settings.host}:{settings.port}/v1/adapters"
    deadline = time.monotonic() + wait_s
    info = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=2)
            info = r.json()
        except (httpx.HTTPError, ValueError):
            return  # no replica here to confirm with; the event is on the topic
        if r.status_code == 401:
            print(f"(serving at {settings.host}:{settings.port} wants an API key to show its routing; "
                  "not confirming: the event is on the topic)", file=sys.stderr)
            return
        if (expect_active == "keep" or info.get("active") == expect_active) and \
                (expect_canary == "keep" or info.get("canary") == expect_canary):
            print(f"serving at {settings.host}:{settings.port} now answers with {info.get('active') or 'the base model'}"
                  + (f" (canary {info['canary']} on {info['canary_fraction']:.0%})" if info.get("canary") else ""))
            return
        time.sleep(0.2)
    if info is not None:
        print(f"warning: serving at {settings.host}:{settings.port} still routes to {info.get('active')}; "
              "it may be catching up or have refused the adapter (see its log)", file=sys.stderr)


# ----------------------------------------------------------------------------- commands
def cmd_list(settings) -> int:
    stored = list_adapters(settings.adapter_dir)
    state, live = replay_state(settings)
    roles = {}
    for role, v in (("active", state.active), ("canary", state.canary), ("previous", state.previous)):
        if v:
            roles.setdefault(v, []).append(role)
    print(f"adapter store: {Path(settings.adapter_dir).resolve()} ({len(stored)} versions)")
    if stored:
        print(f"{'VERSION':<24} {'SOURCE':<8} {'PARENT':<20} {'CREATED':<19}  ROUTING")
    for a in stored:
        created = datetime.fromtimestamp(a["created_at"]).strftime("%Y-%m-%d %H:%M:%S") if a.get("created_at") else "-"
        routing = ", ".join(roles.get(a["version"], [])) or ("refused" if a["version"] in state.refused else
                                                              "announced" if a["version"] in state.known else "-")
        print(f"{a['version']:<24} {a.get('source') or '-':<8} {a.get('parent') or '-':<20} {created:<19}  {routing}")
    print(f"active: {state.active or 'base model'}" + (f"; canary: {state.canary} on {state.canary_fraction:.0%} of users"
                                                       if state.canary else ""))
    if not live:
        print(f"(broker at {settings.kafka_bootstrap} unreachable: routing shown from the store's snapshot)")
    return 0


def cmd_status(settings) -> int:
    try:
        db, routing = open_read_only(settings.data_dir)
    except FileNotFoundError as e:
        _err(str(e))
        return 1
    try:
        rows, board, offline = version_table(db, routing), leaderboard(db), offline_by_version(db)
    except sqlite3.OperationalError as e:
        _err(f"cannot read the learner store in {settings.data_dir}: {e} (start the learner once to upgrade it)")
        return 1
    finally:
        db.close()
    print(format_table(rows, offline) if rows or offline else "no answers logged yet")
    if offline:
        print("(after |: the figures of the round that made each version, on held-out prompts; perplexity on the "
              "reference text, the base model's in brackets; A/B: candidate against its parent, 95 % interval)")
    print("\nleaderboard from blind votes (Bradley-Terry, 95 % intervals):\n" + format_leaderboard(board) if board
          else "\nno blind votes between versions yet: no leaderboard")
    print(f"active: {routing.active or 'base model'}" + (
        f"; canary: {routing.canary} on {routing.canary_fraction:.0%} of users" if routing.canary else ""))
    return 0


def cmd_keygen(folder: Path) -> int:
    try:
        key = make_key_pair(folder)
    except (SigningError, OSError) as e:
        _err(f"cannot make a key pair in {folder}: {e}")
        return 1
    print(f"private key {folder / key.key_id}.key (mode 0600): RLHF_SIGNING_KEY_FILE of the learner and operators\n"
          f"public key  {folder / key.key_id}.pub: add it to RLHF_TRUSTED_KEYS of serving and the learner\n"
          f"{key.key_id}")
    return 0


def cmd_publish(settings, path: Path, canary: float | None, name: str | None) -> int:
    if canary is not None and not 0.0 <= canary <= 1.0:
        _err("--canary must be between 0 and 1")
        return 1
    control_keys(settings, need_signing=True)  # before storing anything: it could not be announced
    try:
        check_peft_adapter(path, resolve_model(settings.model), settings.max_lora_rank)
        version, rel, sha = write_adapter(settings.adapter_dir, name or adapter_name_for(path), path,
                                          base_model=settings.model, source_kind="user",
                                          extra={"imported_from": str(path.resolve())})
        verify_announced(settings.adapter_dir, version, rel, sha, max_rank=settings.max_lora_rank)
    except (ValueError, AdapterError, OSError) as e:
        _err(f"refused {path}: {e}")
        return 1
    print(f"stored {path} as {version} in {Path(settings.adapter_dir).resolve() / rel}")
    try:
        announce(settings, [AdapterAnnounced(version=version, path=rel, manifest_sha256=sha,
                                              canary_fraction=canary, source="user")])
    except Exception as e:
        _err(f"could not announce {version} on {settings.kafka_bootstrap}: {e}; "
             f"once the broker is up, `rlhf adapters activate {version}` announces it")
        return 2
    fraction = canary if canary is not None else settings.canary_fraction
    print(f"announced {version}: " + (f"canary on {fraction:.0%} of users" if fraction > 0 else "active on every replica"))
    _confirm(settings, "keep" if fraction > 0 else version, version if fraction > 0 else "keep")
    return 0


def cmd_activate(settings, version: str) -> int:
    target = None if version in ("base", model_display_name(settings.model)) else version
    state, live = replay_state(settings)
    if not live:
        _err(f"broker at {settings.kafka_bootstrap} unreachable")
        return 2
    events: list = []
    if target is None or target in state.known:
        events.append(RoutingChanged(action="activate", version=target))
    else:
        stored = {a["version"]: a for a in list_adapters(settings.adapter_dir)}
        if target not in stored:
            _err(f"unknown version {target!r}; `rlhf adapters list` shows the store")
            return 1
        a = stored[target]
        try:  # in the store but not on the topic (e.g. the broker lost its log): announce it, active at once
            verify_announced(settings.adapter_dir, target, a["path"], a["manifest_sha256"],
                             max_rank=settings.max_lora_rank)
        except Exception as e:
            _err(f"refused {target}: {e}")
            return 1
        events.append(AdapterAnnounced(version=target, path=a["path"], manifest_sha256=a["manifest_sha256"],
                                       parent=a.get("parent"), canary_fraction=0.0,
                                       source="user" if a.get("source") == "user" else "learner"))
    try:
        announce(settings, events)
    except Exception as e:
        _err(f"could not publish on {settings.kafka_bootstrap}: {e}")
        return 2
    print(f"activated {target or 'the base model'} (was {state.active or 'the base model'})")
    _confirm(settings, target)
    return 0


def cmd_rollback(settings) -> int:
    state, live = replay_state(settings)
    if not live:
        _err(f"broker at {settings.kafka_bootstrap} unreachable")
        return 2
    if state.canary is not None:
        what, expect, canary = f"ended the canary {state.canary}; all traffic on {state.active or 'the base model'}", \
            state.active, None
    elif state.history:
        what, expect, canary = f"rolled back {state.active or 'the base model'} -> {state.previous or 'the base model'}", \
            state.previous, "keep"
    else:
        _err(f"nothing to roll back to: {state.active or 'the base model'} is the only version routed so far")
        return 1
    try:
        announce(settings, [RoutingChanged(action="rollback")])
    except Exception as e:
        _err(f"could not publish on {settings.kafka_bootstrap}: {e}")
        return 2
    print(what)
    _confirm(settings, expect, canary)
    return 0


def cmd_canary(settings, version: str, fraction: float) -> int:
    target = None if version in ("none", "off") else version
    state, live = replay_state(settings)
    if not live:
        _err(f"broker at {settings.kafka_bootstrap} unreachable")
        return 2
    if target is not None and target not in state.known:
        _err(f"unknown version {target!r}; publish it first")
        return 1
    announce(settings, [RoutingChanged(action="canary", version=target, canary_fraction=fraction)])
    print(f"canary: {target} on {fraction:.0%} of users" if target else "canary ended")
    _confirm(settings, state.active, target)
    return 0


def main(args) -> int:
    for noisy in ("kafka", "httpx"):  # their INFO lines bury the answer
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cmd = args.adapters_command
    if cmd == "keygen":
        return cmd_keygen(Path(args.dir))
    settings = get_settings()
    try:
        return _run(settings, cmd, args)
    except SigningError as e:
        _err(str(e))
        return 1


def _run(settings, cmd: str, args) -> int:
    if cmd == "list":
        return cmd_list(settings)
    if cmd == "status":
        return cmd_status(settings)
    if cmd == "publish":
        canary = 0.0 if getattr(args, "activate", False) else args.canary
        return cmd_publish(settings, Path(args.path), canary, getattr(args, "name", None))
    if cmd == "activate":
        return cmd_activate(settings, args.version)
    if cmd == "rollback":
        return cmd_rollback(settings)
    if cmd == "canary":  # if the parser offers it: `rlhf adapters canary VERSION FRACTION`
        return cmd_canary(settings, args.version, float(args.fraction))
    _err(f"unknown adapters command {cmd!r}")
    return 1
