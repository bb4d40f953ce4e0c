"""How much each person counts in a round: per-example weights under per-user and per-client caps.

The learner trains on strangers' input, so volume must not buy influence. Every example of a
round (a feedback row for the reward model, a distinct prompt for PPO) belongs to one user and
one client; the round gives each example a weight such that

    share(user)   = Σ weights of the user's examples    <= max_user_share    (RLHF_LEARNER_MAX_USER_SHARE)
    share(client) = Σ weights of the client's examples  <= max_client_share  (RLHF_LEARNER_MAX_CLIENT_SHARE)

with the weights summing to 1 (they are shares; the reward model rescales them to mean 1).

Water-filling, one partition at a time: start from each example's mass (1, or less for a
suspect user), hold every group whose proportional share is over the cap at exactly the cap,
share what is left among the others in proportion to their mass, and repeat until no group is
over (`water_fill`). Within a group, examples keep their relative masses. `capped_weights`
alternates users and clients until both caps hold.

When a cap cannot be met at all, because fewer than 1/cap groups have any mass (a round with
3 users under a 0.05 cap, or one client under a 0.5 cap), every such group gets an equal
share: the strictest cap that can be met. A single user or a single client thus keeps all
the weight.

When the two caps cannot be met together, the user cap holds and the client cap yields
(`client_cap_met` says so). That happens when the other clients have too few users to take
up the weight the cap would move to them: a client of 2 users beside one of 17 under caps
0.05 and 0.5 would need its 2 users at 0.25 each, 5 times the user cap (and with fewer than
20 users, every user has an equal share, so the clients' shares are fixed by their users).
People come first: capping clients must never make one person count more than the user cap
allows, or a key with a handful of users could claim half of every round. A client can
exceed its cap only through many distinct users, each within the user cap.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

TOLERANCE = 1e-9
MAX_PASSES = 100


def water_fill(masses: dict[str, float], cap: float) -> dict[str, float]:
    """Shares proportional to `masses`, none above `cap` (or equal shares when the cap cannot be met).

    Groups without mass get share 0. The shares of groups with mass sum to 1."""
    live = {g: m for g, m in masses.items() if m > 0}
    shares = {g: 0.0 for g in masses}
    if not live:
        return shares
    if len(live) * cap < 1.0 - TOLERANCE:  # infeasible: equal shares are the strictest cap that holds
        return {**shares, **{g: 1.0 / len(live) for g in live}}
    capped: set[str] = set()
    while True:
        free = 1.0 - cap * len(capped)                       # what the uncapped groups share
        rest = sum(m for g, m in live.items() if g not in capped)
        over = {g for g, m in live.items() if g not in capped and m / rest * free > cap * (1 + TOLERANCE)}
        if not over:
            break
        capped |= over
    for g, m in live.items():
        shares[g] = cap if g in capped else m / rest * free
    return shares


@dataclass
class CappedWeights:
    weights: list[float]                                    # per example, >= 0, sum 1
    user_shares: dict[str, float] = field(default_factory=dict)
    client_shares: dict[str, float] = field(default_factory=dict)
    user_cap: float = 1.0                                   # the cap that holds: max(cap, 1 / users)
    client_cap: float = 1.0                                 # max(cap, 1 / clients)
    client_cap_met: bool = True                             # False: the user cap kept a client over client_cap
    ai_share: float = 0.0                                   # the AI judge's examples' share of the weights

    @property
    def max_user_share(self) -> float:
        return max(self.user_shares.values(), default=0.0)

    @property
    def max_client_share(self) -> float:
        return max(self.client_shares.values(), default=0.0)


def group_shares(weights: list[float], groups: list[str]) -> dict[str, float]:
    total = sum(weights)
    out: dict[str, float] = defaultdict(float)
    for w, g in zip(weights, groups):
        out[g] += w / total if total > 0 else 0.0
    return dict(out)


def _fill(weights: list[float], groups: list[str], cap: float) -> list[float]:
    """Scale each group's examples so the group gets its water-filled share."""
    mass: dict[str, float] = defaultdict(float)
    for w, g in zip(weights, groups):
        mass[g] += w
    target = water_fill(mass, cap)
    return [w * target[g] / mass[g] if mass[g] > 0 else 0.0 for w, g in zip(weights, groups)]


def _effective_cap(cap: float, groups: list[str], weights: list[float]) -> float:
    n = len({g for g, w in zip(groups, weights) if w > 0})
    return max(cap, 1.0 / n) if n else cap


def capped_weights(users: list[str], clients: list[str], *, max_user_share: float, max_client_share: float,
                   masses: list[float] | None = None) -> CappedWeights:
    """Per-example weights (sum 1) under both caps; `masses` (default 1 each) are the starting
    weights, e.g. lowered for suspect users. Example i belongs to users[i] and clients[i]."""
    if not 0 < max_user_share <= 1 or not 0 < max_client_share <= 1:
        raise ValueError("caps must be in (0, 1]")
    if len(users) != len(clients) or (masses is not None and len(masses) != len(users)):
        raise ValueError("users, clients and masses must have one entry per example")
    w = [1.0] * len(users) if masses is None else [max(0.0, float(m)) for m in masses]
    if sum(w) <= 0:
        return CappedWeights([0.0] * len(users))
    total = sum(w)
    w = [x / total for x in w]
    user_cap = _effective_cap(max_user_share, users, w)
    client_cap = _effective_cap(max_client_share, clients, w)
    met = False
    for _ in range(MAX_PASSES):
        before = w
        w = _fill(_fill(w, clients, max_client_share), users, max_user_share)  # the user cap is applied last
        if max(group_shares(w, clients).values()) <= client_cap * (1 + 1e-6):
            met = True
            break
        if max(abs(a - b) for a, b in zip(w, before)) < TOLERANCE:
            break  # a fixed point with a client over the cap: the caps cannot hold together
    return CappedWeights(w, group_shares(w, users), group_shares(w, clients), user_cap, client_cap, met)


def with_ai_examples(people: CappedWeights, is_ai: list[bool], ai_weight: float,
                     max_ai_share: float = 1.0) -> CappedWeights:
    """Weights (sum 1) of a round's examples where some are the AI judge's (`is_ai`): the people's
    capped weights keep their proportions, and each AI example weighs `ai_weight` times a mean
    person's example (RLHF_JUDGE_WEIGHT), all of them together at most `max_ai_share` of the
    round (RLHF_JUDGE_MAX_SHARE): more verdicts than that share allows are scaled down together,
    so however much the judge says, people keep 1 - max_ai_share of the signal. The judge is not
    a user: it takes no user's or client's share under the caps, and the shares reported are the
    people's among themselves. `people` holds the weights of the examples with is_ai False, in order.

    A round with no people's examples has no people's weight to be a share of: its AI examples get
    equal weights (the gate still measures the result on held-out people only)."""
    if not 0 <= max_ai_share <= 1:
        raise ValueError("max_ai_share must be in [0, 1]")
    n_people, n_ai = len(people.weights), sum(is_ai)
    people_total = sum(people.weights)
    if n_people and people_total > 0:
        ai_total = ai_weight * people_total * n_ai / n_people
        if max_ai_share < 1:  # ai / (ai + people) <= max  <=>  ai <= people · max / (1 - max)
            ai_total = min(ai_total, people_total * max_ai_share / (1 - max_ai_share))
        per_ai = ai_total / n_ai if n_ai else 0.0
    else:
        per_ai = 1.0
    mine = iter(people.weights)
    raw = [per_ai if ai else next(mine) for ai in is_ai]
    total = sum(raw)
    weights = [w / total for w in raw] if total > 0 else raw
    ai_share = sum(w for w, ai in zip(weights, is_ai) if ai)
    return CappedWeights(weights, people.user_shares, people.client_shares, people.user_cap, people.client_cap,
                         people.client_cap_met, ai_share)


def systematic_sample(weights: list[float], k: int, rng) -> list[int]:
    """k indices drawn in proportion to `weights` (with repeats), by systematic sampling: index i
    is drawn floor or ceil of k·w_i/Σw times, so a run of indices (one user's examples, when the
    caller groups them) gets within one draw of its expected count. Zero weights are never drawn."""
    total = sum(weights)
    if k <= 0 or total <= 0:
        return []
    step = total / k
    point = rng.random() * step
    out, cum = [], 0.0
    for i, w in enumerate(weights):
        cum += w
        while point < cum and len(out) < k:
            out.append(i)
            point += step
    last = max(i for i, w in enumerate(weights) if w > 0)
    return out + [last] * (k - len(out))  # a draw lost to rounding at the very end


def weighted_order(weights: list[float], rng) -> list[int]:
    """Indices in the order of a weighted sample without replacement (Efraimidis-Spirakis:
    key u^(1/w), largest first); zero weights are left out."""
    keys = [(rng.random() ** (1.0 / w), i) for i, w in enumerate(weights) if w > 0]
    return [i for _, i in sorted(keys, reverse=True)]
