"""Live evaluation: how users receive each adapter version, from the events serving logged.

    table = version_table(store.db, store.routing())    # one VersionFigures per version that answered
    offline = offline_by_version(store.db)                # each published version's round figures
    print(format_table(table, offline))                   # what `rlhf adapters status` prints
    db, routing = open_read_only(data_dir)                # beside a running learner (the CLI)

Per version, every rate with its 95 % confidence interval (learner/canary_statistics.py: valid
however often it is looked at, so a dashboard refreshed every minute does not mislead):
thumbs-up rate, share of answers that got any feedback, win rate in blind votes against other
versions; and answers given, mean answer length in tokens. Thumbs count at most `max_per_user`
per user and version, and blind votes at most `max_per_user` per user and pair of versions: the
same counts the promotion controller and the leaderboard use (`thumbs_by_version`, `votes_by_pair`).

Beside them, each published version's offline figures from the round that made it (the metrics its
manifest keeps, `OFFLINE_FIGURES`): the gate's reward gain and KL to the reference, perplexity on the
reference text (and the base model's), answer length on the gate's prompts, A/B win rate against
its parent (learner/offline_figures.py).
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from adapters.routing_state import RoutingState
from learner.canary_statistics import Interval, rate_interval
from learner.store import STORE_FILE

DISPLAY_ALPHA = 0.05
HORIZON = 1000
"""Where the intervals are tightest (observations); they stay valid everywhere."""
BASE = "base"
"""How the base model (answers without an adapter) is named in the table."""
MAX_PER_USER = 20
"""A user's thumbs counted per version, and votes per pair of versions (the rest add nothing)."""


@dataclass(frozen=True)
class VersionFigures:
    version: str                 # `policy@v3`, or `base`
    role: str                    # active | canary | (empty)
    answers: int
    answer_tokens: float         # mean completion tokens
    thumbs_up: Interval
    with_feedback: Interval
    pairwise_win: Interval


# The answers any joined feedback names, as one set that each interaction is looked up in: a correlated
# EXISTS over the three id columns scanned the feedback table once per interaction (104 s on 12k
# interactions and 12k feedback rows, against 0.07 s this way).
ANSWERS = """
WITH answered(id) AS (
  SELECT response_id FROM feedback WHERE status = 'joined' AND response_id IS NOT NULL
  UNION SELECT chosen_id FROM feedback WHERE status = 'joined' AND chosen_id IS NOT NULL
  UNION SELECT rejected_id FROM feedback WHERE status = 'joined' AND rejected_id IS NOT NULL)
SELECT COALESCE(i.adapter, 'base') AS version, COUNT(*) AS answers, AVG(i.completion_tokens) AS tokens,
       SUM(i.response_id IN answered) AS with_feedback
FROM interactions i GROUP BY version
"""

THUMBS = """
SELECT version, SUM(up) AS ups, COUNT(*) AS n FROM (
  SELECT COALESCE(i.adapter, 'base') AS version, f.value AS up,
         ROW_NUMBER() OVER (PARTITION BY f.user, COALESCE(i.adapter, 'base') ORDER BY f.ts) AS nth
  FROM feedback f JOIN interactions i ON i.response_id = f.response_id
  WHERE f.type = 'thumbs' AND f.status = 'joined' AND i.ts >= ?)
WHERE nth <= ? GROUP BY version
"""

VOTES = """
SELECT chosen, rejected, COUNT(*) AS n FROM (
  SELECT chosen, rejected,
         ROW_NUMBER() OVER (PARTITION BY user, MIN(chosen, rejected), MAX(chosen, rejected) ORDER BY ts) AS nth
  FROM (SELECT f.user AS user, f.ts AS ts, COALESCE(c.adapter, 'base') AS chosen, COALESCE(r.adapter, 'base') AS rejected
        FROM feedback f JOIN interactions c ON c.response_id = f.chosen_id
                        JOIN interactions r ON r.response_id = f.rejected_id
        WHERE f.type = 'pairwise' AND f.status = 'joined' AND f.source = 'user' AND c.ts >= ? AND r.ts >= ?)
  WHERE chosen != rejected)
WHERE nth <= ? GROUP BY chosen, rejected
"""


OFFLINE_FIGURES = ("reward_candidate", "reward_serving", "reward_gain", "reward_gain_se", "kl_candidate",
                   "perplexity_candidate", "perplexity_base", "answer_tokens_candidate", "answer_tokens_serving",
                   "win_rate_vs_parent", "win_rate_vs_parent_low", "win_rate_vs_parent_high", "win_rate_prompts")
"""The round's metrics that describe a published version (learner/round.py, section 4)."""


def open_read_only(data_dir: Path | str) -> tuple[sqlite3.Connection, RoutingState]:
    """The learner store of RLHF_DATA_DIR, read-only (a running learner keeps writing), and its routing."""
    path = Path(data_dir) / STORE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no learner store at {path}: the learner has not run with this RLHF_DATA_DIR")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    raw = db.execute("SELECT value FROM meta WHERE key = 'routing'").fetchone()
    return db, RoutingState.from_json(json.loads(raw["value"])) if raw else RoutingState()


def thumbs_by_version(db: sqlite3.Connection, max_per_user: int, since: float = 0.0) -> dict[str, tuple[int, int]]:
    """(ups, thumbs) per version (`base` without an adapter) on answers given since `since`, each
    user's first `max_per_user` thumbs per version counted."""
    return {r["version"]: (r["ups"], r["n"]) for r in db.execute(THUMBS, (since, max_per_user))}


def votes_by_pair(db: sqlite3.Connection, max_per_user: int = MAX_PER_USER, since: float = 0.0
                  ) -> dict[tuple[str, str], int]:
    """Users' blind votes between two versions (`base` without an adapter) on answers given since
    `since`: {(winner, loser): count}, each user's first `max_per_user` votes per pair counted."""
    return {(r["chosen"], r["rejected"]): r["n"] for r in db.execute(VOTES, (since, since, max_per_user))}


def version_table(db: sqlite3.Connection, routing: RoutingState, max_per_user: int = MAX_PER_USER
                  ) -> list[VersionFigures]:
    """Every version that answered, the active one first, then the canary, then newest first."""
    roles = {routing.active or BASE: "active"}
    if routing.canary:
        roles[routing.canary] = "canary"
    thumbs = thumbs_by_version(db, max_per_user)
    wins: dict[str, list[int]] = {}
    for (chosen, rejected), n in votes_by_pair(db, max_per_user).items():
        wins.setdefault(chosen, [0, 0])[0] += n
        wins.setdefault(rejected, [0, 0])[1] += n
    rows = []
    for r in db.execute(ANSWERS):
        v = r["version"]
        ups, n = thumbs.get(v, (0, 0))
        w, lo = wins.get(v, (0, 0))
        rows.append(VersionFigures(
            v, roles.get(v, ""), r["answers"], float(r["tokens"] or 0.0),
            rate_interval(ups, n, DISPLAY_ALPHA, HORIZON),
            rate_interval(r["with_feedback"], r["answers"], DISPLAY_ALPHA, HORIZON),
            rate_interval(w, w + lo, DISPLAY_ALPHA, HORIZON)))
    order = {"active": 0, "canary": 1, "": 2}
    return sorted(rows, key=lambda f: (order[f.role], -version_number(f.version)))


def offline_by_version(db: sqlite3.Connection) -> dict[str, dict[str, float]]:
    """Each published version's offline figures (`OFFLINE_FIGURES` its round measured; finite numbers only)."""
    out = {}
    for r in db.execute("SELECT version, metrics FROM adapters WHERE status = 'published'"):
        metrics = json.loads(r["metrics"] or "{}")
        out[r["version"]] = {k: float(metrics[k]) for k in OFFLINE_FIGURES
                             if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k])}
    return out


def version_number(version: str) -> int:
    tail = version.rpartition("@v")[2]
    return int(tail) if tail.isdigit() else -1


def _rate(i: Interval) -> str:
    return "-" if i.n == 0 else f"{100 * i.estimate:.0f}% [{100 * i.low:.0f}-{100 * i.high:.0f}] n={i.n}"


def _offline(m: dict[str, float]) -> tuple[str, ...]:
    """The offline cells of one version: reward gain ± se, KL, perplexity (base), gate tokens, A/B vs parent."""
    def num(key: str, fmt: str) -> str:
        return format(m[key], fmt) if key in m else "-"

    gain = f"{m['reward_gain']:+.2f} ± {m.get('reward_gain_se', 0.0):.2f}" if "reward_gain" in m else "-"
    ppl = f"{num('perplexity_candidate', '.1f')} ({num('perplexity_base', '.1f')})" \
        if "perplexity_candidate" in m else "-"
    ab = (f"{100 * m['win_rate_vs_parent']:.0f}% [{100 * m['win_rate_vs_parent_low']:.0f}-"
          f"{100 * m['win_rate_vs_parent_high']:.0f}] n={m['win_rate_prompts']:.0f}"
          if "win_rate_vs_parent" in m else "-")
    return gain, num("kl_candidate", ".2f"), ppl, num("answer_tokens_candidate", ".0f"), ab


def format_table(rows: list[VersionFigures], offline: dict[str, dict[str, float]] | None = None) -> str:
    """The table a person reads in five seconds: live figures (rates in %, 95 % intervals), then after `|`
    the offline figures of the round that made each version (`offline_by_version`); a published version
    no user has seen yet gets a row of its offline figures alone."""
    offline = offline or {}
    head = ("version", "role", "answers", "tokens", "thumbs up", "with feedback", "wins (blind votes)", "|",
            "reward gain", "KL", "perplexity (base)", "gate tokens", "A/B vs parent")
    body = [(f.version, f.role, str(f.answers), f"{f.answer_tokens:.0f}", _rate(f.thumbs_up), _rate(f.with_feedback),
             _rate(f.pairwise_win), "|", *_offline(offline.get(f.version, {}))) for f in rows]
    live = {f.version for f in rows}
    unseen = sorted((v for v in offline if v not in live), key=version_number, reverse=True)
    body += [(v, "", "0", "-", "-", "-", "-", "|", *_offline(offline[v])) for v in unseen]
    widths = [max(len(r[k]) for r in [head, *body]) for k in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *body])
