"""The model card: serving defaults that belong to a prepared model, stored beside its weights.

`rlhf_model.json`, e.g.

    {"base_model": "google/gemma-3-270m",
     "stop": ["\\nQuestion:", "\\nAnswer:", "\\n\\n"],          # end an answer where the next turn would start
     "preamble": [{"role": "user", "content": "..."},          # example exchanges rendered before the
                  {"role": "assistant", "content": "..."}],    # conversation (base model only)
     "sampling": {"temperature": 0.3, "top_p": 0.9}}           # used when a request gives none

Serving and the learner both read its stop strings; models prepared elsewhere have no card.
The operator replaces or turns off the preamble with `RLHF_PREAMBLE` (a JSON file of messages,
or `none`); `preamble_messages` resolves that setting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MODEL_CARD = "rlhf_model.json"
PREAMBLE_ROLES = ("user", "assistant")


class PreambleError(ValueError):
    """An operator's preamble file that cannot be used."""


def model_card(path: Path) -> dict:
    """Serving defaults stored beside a prepared model (empty for other models)."""
    f = Path(path) / MODEL_CARD
    return json.loads(f.read_text()) if f.exists() else {}


def write_model_card(folder: Path, card: dict) -> None:
    """Write the card atomically (a reader never sees half of it)."""
    f = Path(folder) / MODEL_CARD
    tmp = f.with_name(f".{MODEL_CARD}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(card, indent=2))
    os.replace(tmp, f)


def refresh_model_card(folder: Path, card: dict) -> None:
    """Rewrite the card when the code's card for this model changed (a cache prepared by an
    earlier release gets the new defaults without converting the weights again)."""
    if model_card(folder) != card:
        write_model_card(folder, card)


def check_preamble(messages) -> list[dict]:
    """A preamble is alternating user/assistant exchanges of plain text, starting with the user."""
    if not isinstance(messages, list):
        raise PreambleError("a preamble is a JSON list of {\"role\", \"content\"} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise PreambleError(f"preamble message {i} needs a text `content`")
        want = PREAMBLE_ROLES[i % 2]
        if m.get("role") != want:
            raise PreambleError(f"preamble message {i} must have role {want!r} (user and assistant alternate)")
        out.append({"role": want, "content": m["content"]})
    if len(out) % 2:
        raise PreambleError("a preamble ends with an assistant answer")
    return out


def preamble_messages(card: dict, setting: str) -> list[dict]:
    """The example exchanges put before each conversation: the card's (`setting` empty), none
    (`none`), or the JSON file `setting` names."""
    if setting.strip().lower() == "none":
        return []
    if not setting:
        return check_preamble(card.get("preamble", []))
    path = Path(setting).expanduser()
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise PreambleError(f"cannot read the preamble file {path}: {e}") from e
    except ValueError as e:
        raise PreambleError(f"the preamble file {path} is not JSON: {e}") from e
    return check_preamble(data)


def with_preamble(messages: list[dict], preamble: list[dict]) -> list[dict]:
    """The conversation with the preamble's exchanges in front (after any leading system messages)."""
    lead = 0
    while lead < len(messages) and messages[lead]["role"] == "system":
        lead += 1
    return messages[:lead] + preamble + messages[lead:]


def sampling_defaults(card: dict) -> dict:
    """{"temperature", "top_p"} a request gets when it gives none (OpenAI's 1.0 where the card says nothing)."""
    s = card.get("sampling", {})
    return {"temperature": float(s.get("temperature", 1.0)), "top_p": float(s.get("top_p", 1.0))}
