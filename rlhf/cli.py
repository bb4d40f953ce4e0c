"""The `rlhf` command line.

    rlhf serve   [--model NAME] [--host H] [--port N]     chat API (vLLM) + feedback
    rlhf learn   [--model NAME]                           reward model + PPO on LoRA
    rlhf judge                                            AI judge: pairwise feedback with source "ai"
    rlhf broker  [--port N]                               embedded Kafka-compatible broker
    rlhf up      [--model NAME]                           broker + serving + learner (+ judge) together
    rlhf model prepare [--model NAME] [--no-starting-adapter] make a model (and its policy@v0) available offline
    rlhf adapters list|publish PATH|activate VERSION|rollback|canary VERSION FRACTION|keygen DIR
    rlhf keys add NAME|list|revoke NAME                   API keys for RLHF_AUTH=api-key

Options given here override the `RLHF_*` environment variables (see rlhf/settings.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _apply_overrides(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Turn command-line options into RLHF_* variables, so child processes see them too."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"RLHF_{name.upper()}"] = str(value)
    from rlhf.settings import get_settings  # lazy: keeps `rlhf --help` fast

    get_settings.cache_clear()


def _setup_logging() -> None:
    from rlhf.settings import get_settings  # lazy: keeps `rlhf --help` fast

    logging.basicConfig(level=get_settings().log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_model_prepare(args: argparse.Namespace) -> int:
    # lazy: keeps `rlhf --help` fast
    from rlhf.models.cache import ModelError
    from rlhf.models.card import model_card, preamble_messages
    from rlhf.models.gemma import check_coherent
    from rlhf.models.registry import DEFAULT_MODEL, resolve_model
    from rlhf.settings import get_settings

    _apply_overrides(args, ("model",))
    _setup_logging()
    name = get_settings().model
    try:
        path = resolve_model(name)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if name in (DEFAULT_MODEL, "gemma") and args.verify:
        text = check_coherent(path)
        print(f"check: greedy answer to the capital of France: {text.strip()!r}", file=sys.stderr)
        if "Paris" not in text:
            print("error: the prepared model does not answer coherently", file=sys.stderr)
            return 1
    if args.starting_adapter and preamble_messages(model_card(path), get_settings().preamble):
        from learner.starting_adapter import build_starting_adapter  # heavy: torch, vLLM

        folder = build_starting_adapter(get_settings(), path)
        print(f"starting adapter (published as policy@v0 by the learner's first start): {folder}", file=sys.stderr)
    print(path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _apply_overrides(args, ("model", "host", "port"))
    _setup_logging()
    from serving.app import run  # lazy: keeps `rlhf --help` fast

    return run()


def cmd_learn(args: argparse.Namespace) -> int:
    _apply_overrides(args, ("model",))
    _setup_logging()
    from learner.main import run  # lazy: keeps `rlhf --help` fast

    return run()


def cmd_judge(args: argparse.Namespace) -> int:
    _setup_logging()
    from judge.main import run  # lazy: keeps `rlhf --help` fast

    return run()


def cmd_broker(args: argparse.Namespace) -> int:
    _setup_logging()
    from feedback.broker import run  # lazy: keeps `rlhf --help` fast

    return run(port=args.port)


def cmd_up(args: argparse.Namespace) -> int:
    _apply_overrides(args, ("model", "host", "port"))
    _setup_logging()
    from rlhf.up import run  # lazy: keeps `rlhf --help` fast

    return run()


def cmd_adapters(args: argparse.Namespace) -> int:
    _setup_logging()
    from rlhf.adapters_cli import main  # lazy: keeps `rlhf --help` fast

    return main(args)


def cmd_keys(args: argparse.Namespace) -> int:
    from rlhf.keys_cli import main  # lazy: keeps `rlhf --help` fast

    return main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf", description="Online RLHF serving: a chat model that learns from its users.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="start the chat API (vLLM engine in-process)")
    s.add_argument("--model", help="`gemma-3-270m` (default), `tiny`, or a local HF model folder")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("learn", help="start the learner (reward model + PPO on LoRA)")
    s.add_argument("--model")
    s.set_defaults(func=cmd_learn)

    s = sub.add_parser("judge", help="start the AI judge: pairwise feedback with source `ai` from a judge model "
                                     "(RLHF_JUDGE_*)")
    s.set_defaults(func=cmd_judge)

    s = sub.add_parser("broker", help="start the embedded Kafka-compatible broker")
    s.add_argument("--port", type=int, default=9092)
    s.set_defaults(func=cmd_broker)

    s = sub.add_parser("up", help="broker + serving + learner, embedded defaults")
    s.add_argument("--model")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_up)

    m = sub.add_parser("model", help="model management")
    msub = m.add_subparsers(dest="model_command", required=True)
    s = msub.add_parser("prepare", help="make a model available offline; prints its folder last")
    s.add_argument("--model")
    s.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the coherence check of the default model")
    s.add_argument("--starting-adapter", action=argparse.BooleanOptionalAction, default=True,
                   help="also build the starting adapter (policy@v0) of a model whose card has a preamble "
                        "(the default; about 7.5 minutes on two CPU cores, once per model: it is cached)")
    s.set_defaults(func=cmd_model_prepare)

    a = sub.add_parser("adapters", help="list, publish, activate or roll back adapters")
    asub = a.add_subparsers(dest="adapters_command", required=True)
    asub.add_parser("list", help="list adapters in the store and what serving routes to")
    asub.add_parser("status", help="how users receive each version: thumbs up, feedback, blind-vote wins (95%% "
                                   "intervals), from the learner store of RLHF_DATA_DIR")
    s = asub.add_parser("publish", help="validate a PEFT adapter folder, store it and announce it")
    s.add_argument("path")
    start = s.add_mutually_exclusive_group()
    start.add_argument("--canary", type=float, default=None, help="start as canary on this share of users")
    start.add_argument("--activate", action="store_true", help="active for every user at once, no canary")
    s.add_argument("--name", default=None, help="adapter name (default: the folder's name)")
    s = asub.add_parser("activate", help="route all traffic to VERSION (`base` for no adapter)")
    s.add_argument("version")
    asub.add_parser("rollback", help="route traffic back to the previous version")
    s = asub.add_parser("canary", help="send a sticky share of users to VERSION")
    s.add_argument("version")
    s.add_argument("fraction", type=float, help="share of users, 0..1")
    s = asub.add_parser("keygen", help="make an Ed25519 key pair that signs routing changes; prints its key id last")
    s.add_argument("dir", help="folder for KEY_ID.key (private) and KEY_ID.pub (public)")
    a.set_defaults(func=cmd_adapters)

    k = sub.add_parser("keys", help="API keys of the clients serving accepts (RLHF_AUTH=api-key)")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    s = ksub.add_parser("add", help="add a client; prints its new key once, as the last line")
    s.add_argument("name", help="client name: letters, digits, '.', '_', '-' (its users become NAME:user)")
    ksub.add_parser("list", help="list clients: name, created, active or revoked")
    s = ksub.add_parser("revoke", help="revoke a client's key (serving refuses it within about a second)")
    s.add_argument("name")
    k.set_defaults(func=cmd_keys)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
