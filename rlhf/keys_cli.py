"""`rlhf keys ...`: the API keys serving accepts with RLHF_AUTH=api-key.

    rlhf keys add NAME       a new client; prints its key once, as the last line of stdout
    rlhf keys list           every client: name, when created, active or revoked (never a key)
    rlhf keys revoke NAME    serving answers 401 to that client's key within about a second

The keys live hashed in the file RLHF_API_KEYS_FILE (serving/api_keys.py says why and how);
serving re-reads it when it changes, so none of this needs a restart. Exit codes: 0 done,
1 refused (bad, duplicate or unknown name; no RLHF_API_KEYS_FILE; unreadable file).

    KEY=$(rlhf keys add acme)    # stdout is the key alone; the notes go to stderr
"""

from __future__ import annotations

import argparse
import sys

from rlhf.settings import get_settings
from serving.api_keys import KeyFileError, add_key, read_records, revoke_key


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 1


def cmd_add(path: str, name: str) -> int:
    key = add_key(path, name)
    print(f"added client {name!r} to {path}. Its key follows; it is shown only this once, and the file keeps "
          "only its hash. Clients send it as `Authorization: Bearer KEY` (the openai client's api_key).",
          file=sys.stderr)
    print(key)
    return 0


def cmd_list(path: str) -> int:
    records = read_records(path)
    if not records:
        print(f"no clients in {path}", file=sys.stderr)
        return 0
    width = max(len("NAME"), *(len(r.name) for r in records))
    print(f"{'NAME':<{width}}  {'CREATED':<20}  {'KEY HASH':<16}  STATUS")
    for r in records:
        status = "active" if r.active else f"revoked {r.revoked}"
        print(f"{r.name:<{width}}  {r.created:<20}  {r.sha256[:12] + '…':<16}  {status}")
    return 0


def cmd_revoke(path: str, name: str) -> int:
    n = revoke_key(path, name)
    print(f"revoked {n} key{'s' if n != 1 else ''} of client {name!r}; serving refuses {'them' if n != 1 else 'it'} "
          "within about a second")
    return 0


def main(args: argparse.Namespace) -> int:
    path = get_settings().api_keys_file
    if not path:
        return _err("RLHF_API_KEYS_FILE is not set: point it at the keys file serving reads "
                    "(e.g. RLHF_API_KEYS_FILE=.data/api-keys)")
    try:
        if args.keys_command == "add":
            return cmd_add(path, args.name)
        if args.keys_command == "list":
            return cmd_list(path)
        return cmd_revoke(path, args.name)
    except KeyFileError as e:
        return _err(str(e))
