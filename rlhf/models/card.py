"""The model card: serving defaults that belong to a prepared model, stored beside its weights.

`rlhf_model.json`, e.g. `{"stop": ["\\nQuestion:"], "base_model": "google/gemma-3-270m"}`.
Serving and the learner both read its stop strings; models prepared elsewhere have no card.
"""

from __future__ import annotations

import json
from pathlib import Path

MODEL_CARD = "rlhf_model.json"


def model_card(path: Path) -> dict:
    """Serving defaults stored beside a prepared model (empty for other models)."""
    f = Path(path) / MODEL_CARD
    return json.loads(f.read_text()) if f.exists() else {}


def write_model_card(folder: Path, card: dict) -> None:
    (Path(folder) / MODEL_CARD).write_text(json.dumps(card, indent=2))
