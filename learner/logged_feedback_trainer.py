"""What the trainers over logged feedback share (DPO on pairs, KTO on labelled answers): a shuffled
cycle over their items, and the statistics every algorithm reports for one step.

    class DPOTrainer(LoggedFeedbackTrainer): ...   # sets self.weights (one per item) and self._time_reference

They sample nothing: their "rollout" time is 0, and the reference pass made once when the trainer was
built counts as the first step's scoring time. The round samples their policy after an update to
measure its KL for the KL guard (`PolicyTrainer.sampled_kl`).
"""

from __future__ import annotations

import time

from learner.policy_trainer import PolicyTrainer


def answer_stats(answers: list[list[int]], eos_id: int | None) -> tuple[float, float]:
    """(share of answers ending with EOS, mean answer length in tokens)."""
    n = max(1, len(answers))
    return sum(bool(a) and a[-1] == eos_id for a in answers) / n, sum(map(len, answers)) / n


class LoggedFeedbackTrainer(PolicyTrainer):
    samples_before_update = False
    _order: list[int]             # set to [] by the subclass
    _time_reference: float        # seconds of the reference pass, set by the subclass

    def step_stats(self, stats: dict[str, list[float]], answers: list[list[int]], t0: float) -> dict:
        """Means of the step's lists, and what every algorithm reports (learner/ppo.py's step)."""
        eos, length = answer_stats(answers, self.tokenizer.eos_token_id)
        time_score, self._time_reference = self._time_reference, 0.0  # the reference pass counts once
        return {**{k: sum(v) / len(v) for k, v in stats.items()}, "kl_coef": self.cfg.beta, "clipfrac": 0.0,
                "eos_fraction": eos, "response_tokens": length, "time_rollout": 0.0, "time_score": time_score,
                "time_update": time.perf_counter() - t0}

    def next_indices(self, n: int) -> list[int]:
        """The next n items of a shuffled cycle over the data (reshuffled at each pass)."""
        out = []
        while len(out) < n:
            if not self._order:
                self._order = list(range(len(self.weights)))
                self.rng.shuffle(self._order)
            out.append(self._order.pop())
        return out
