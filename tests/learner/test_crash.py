"""Kill the learner (SIGKILL, whole process group) while it consumes and while it trains; restarted,
it has every event exactly once. Real broker (Tansu), events produced with kafka-python."""

from __future__ import annotations

import random
import uuid

from kafka import KafkaProducer

from feedback.event_hmac import sealed
from feedback.schema import TOPIC_FEEDBACK, TOPIC_INTERACTIONS, Interaction, Message, Pairwise, Thumbs, encode
from feedback.topics import ensure_topics
from learner.round import LearnerConfig
from learner.store import split_of
from rlhf.settings import Settings
from tests.learner.conftest import SPLIT_KEY

N_INTERACTIONS = 4000
N_THUMBS = 2000
N_REPLACED = 100
N_PAIRS = 50


def held_out_user(nonce: str) -> str:
    """A user id the learner (split key SPLIT_KEY) holds out: its thumbs let the gate measure a round, so
    the learner starts one whatever else the shared broker holds (a round the gate could not measure is
    not started)."""
    fraction = LearnerConfig().heldout_fraction
    return next(u for k in range(1000) if split_of(u := f"{nonce}-u{k}", fraction, SPLIT_KEY.encode()) == "heldout")


def make_events(nonce: str):
    rng = random.Random(7)
    thumbs_user = held_out_user(nonce)
    inter, fb = [], []
    for i in range(N_INTERACTIONS):
        conv = f"{nonce}-c{i // 2}"  # two answers per conversation, so pairs can be formed
        inter.append(Interaction(response_id=f"{nonce}-r{i}", completion_id=f"{nonce}-cmp{i // 2}",
                                 choice_index=i % 2, conversation_id=conv, user=thumbs_user,
                                 messages=[Message(role="user", content=f"Tell me about cats, {i // 2}.")],
                                 response=rng.choice(["Cats are warm.", "I think cats are happy and love a song."]),
                                 finish_reason="stop", model="tiny"))
    for i in range(N_THUMBS):
        fb.append(Thumbs(response_id=f"{nonce}-r{i}", conversation_id=f"{nonce}-c{i // 2}", user=thumbs_user,
                         value="up" if i % 3 else "down", ts=1000.0))
    # the same user changes their mind later: replaces, must not add
    replaced = [Thumbs(response_id=f"{nonce}-r{i}", conversation_id=f"{nonce}-c{i // 2}", user=thumbs_user,
                       value="down" if i % 3 else "up", ts=2000.0) for i in range(N_REPLACED)]
    pairs = [Pairwise(chosen_response_id=f"{nonce}-r{2 * k + 1}", rejected_response_id=f"{nonce}-r{2 * k}",
                      conversation_id=f"{nonce}-c{k}", user=f"{nonce}-p") for k in range(N_PAIRS)]
    return inter, fb, replaced, pairs


def produce(bootstrap: str, events: list[tuple[str, object]], event_key: str) -> None:
    """Events as serving writes them (with its HMAC, which the learner checks)."""
    p = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=20)
    for topic, ev in events:
        p.send(topic, key=ev.key(), value=encode(sealed(ev, event_key)))
    p.flush(30)
    p.close()


def test_sigkill_while_consuming_and_training_loses_and_doubles_nothing(broker, learner_factory, control_env):
    settings = Settings(kafka_bootstrap=broker)
    ensure_topics(settings)
    nonce = uuid.uuid4().hex[:8]
    inter, fb, replaced, pairs = make_events(nonce)
    first = [(TOPIC_FEEDBACK, e) for e in fb[: N_THUMBS // 2]] + [(TOPIC_INTERACTIONS, e) for e in inter]
    first += [(TOPIC_FEEDBACK, e) for e in fb[N_THUMBS // 2:]]
    produce(broker, first, control_env["RLHF_EVENT_HMAC_KEY"])

    n_feedback = N_THUMBS + N_PAIRS  # rows after dedupe by (user, response) / (user, pair)
    lp = learner_factory(RLHF_KAFKA_BOOTSTRAP=broker, RLHF_LEARNER_MIN_FEEDBACK=n_feedback,
                         RLHF_LEARNER_INTERVAL_S=100000, RLHF_LEARNER_JOIN_WAIT_S=100000)
    mine = f"{nonce}-%"

    def stored() -> int:
        rows = lp.query("SELECT COUNT(*) FROM interactions WHERE response_id LIKE ?", (mine,))
        rows2 = lp.query("SELECT COUNT(*) FROM feedback WHERE user LIKE ?", (mine,))
        return (rows[0][0] if rows else 0) + (rows2[0][0] if rows2 else 0)

    # 1. kill while consuming: as soon as part (not all) of the first batch is in the store
    kills_mid_consume = 0
    for attempt in range(3):
        lp.launch()
        before = stored()
        n = lp.wait("consumption to progress", lambda: stored() > before and stored(), timeout=120, every=0.02)
        lp.kill()
        if n < N_INTERACTIONS + N_THUMBS:  # interaction + feedback rows: not everything had arrived
            kills_mid_consume += 1
    assert kills_mid_consume >= 1, "the learner consumed everything before it could be killed"

    # more events, and a redelivery of events already sent (same event ids)
    produce(broker, [(TOPIC_FEEDBACK, e) for e in replaced + pairs] + first[:500], control_env["RLHF_EVENT_HMAC_KEY"])

    # 2. kill while training: the round starts once all feedback is in; kill during the reward model fit
    lp.launch()
    lp.wait("a round to start training", lambda: lp.query("SELECT id FROM rounds WHERE status='running'")
            and "reward model: epoch 1 over" in lp.log().split("===== start")[-1], timeout=240, every=0.05)
    (running_round,) = lp.query("SELECT id, feedback_count FROM rounds WHERE status='running'")
    lp.kill()

    # 3. restart: the interrupted round is marked aborted, its feedback counts again, a new round starts
    lp.launch()
    lp.wait("a new round after the interrupted one",
            lambda: lp.query("SELECT id FROM rounds WHERE id > ? AND status='running'", (running_round[0],)),
            timeout=240)
    assert lp.stop() == 0  # SIGTERM during a round: a clean stop

    # --- nothing lost, nothing counted twice ---
    want_events = {e.event_id for e in inter + fb + replaced + pairs}
    got = lp.query("SELECT event_id FROM events")
    got_mine = [r[0] for r in got if r[0] in want_events]
    assert len(got_mine) == len(set(got_mine)) == len(want_events)
    assert lp.query("SELECT COUNT(*) FROM interactions WHERE response_id LIKE ?", (mine,))[0][0] == N_INTERACTIONS
    assert lp.query("SELECT COUNT(*) FROM feedback WHERE user LIKE ?", (mine,))[0][0] == n_feedback
    assert lp.query("SELECT COUNT(*) FROM feedback WHERE user LIKE ? AND status='joined'", (mine,))[0][0] == n_feedback
    # the replaced thumbs hold the later value
    values = dict(lp.query("SELECT response_id, value FROM feedback WHERE type='thumbs' AND user LIKE ?", (mine,)))
    for i in range(N_THUMBS):
        expected = (0 if i % 3 else 1) if i < N_REPLACED else (1 if i % 3 else 0)
        assert values[f"{nonce}-r{i}"] == expected, i
    # rounds: the killed one aborted; the next one saw the same feedback, none of it twice
    rounds = lp.query("SELECT id, status, feedback_count FROM rounds ORDER BY id")
    statuses = {rid: (status, count) for rid, status, count in rounds}
    assert statuses[running_round[0]][0] == "aborted"
    later = [(s, c) for rid, (s, c) in statuses.items() if rid > running_round[0]]
    assert later and later[0][1] >= running_round[1] >= n_feedback
    assert later[0][0] == "failed"  # stopped by SIGTERM mid-round, recorded as such
    # the seq counter gave each joined row one number
    seqs = lp.query("SELECT seq FROM feedback WHERE status='joined'")
    assert len({s for (s,) in seqs}) == len(seqs)
