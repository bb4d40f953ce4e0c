"""Pure tests of serving/feedback_repeats.py: feedback posted again unchanged is published once
and answered with the first event id; a changed value is published and then stands."""

from __future__ import annotations

import asyncio

import pytest

from feedback.schema import Pairwise, Thumbs
from serving.feedback_repeats import RecentFeedback


def thumbs(value="up", user="acme:alice", rid="r_" + "a" * 32 + "_0", comment=None) -> Thumbs:
    return Thumbs(response_id=rid, conversation_id="a" * 32, user=user, client="acme", value=value, comment=comment)


def pair(chosen: int, user="acme:alice") -> Pairwise:
    ids = ["r_" + "b" * 32 + "_0", "r_" + "b" * 32 + "_1"]
    return Pairwise(chosen_response_id=ids[chosen], rejected_response_id=ids[1 - chosen], conversation_id="b" * 32,
                    user=user, client="acme")


class Topic:
    """Stands in for the event publisher: records what was published."""

    def __init__(self, fail_first: int = 0):
        self.events: list = []
        self.fail_first = fail_first

    async def publish(self, event) -> None:
        await asyncio.sleep(0)
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("spool full")
        self.events.append(event)


def run(coro):
    return asyncio.run(coro)


def test_the_same_thumbs_three_times_is_one_event_with_one_id():
    async def go():
        recent, topic = RecentFeedback(ttl_s=60), Topic()
        ids = [await recent.publish_once(thumbs(), topic.publish) for _ in range(3)]
        return ids, topic.events

    ids, events = run(go())
    assert len(set(ids)) == 1 and [e.event_id for e in events] == ids[:1]


def test_a_changed_vote_is_published_and_then_stands():
    async def go():
        recent, topic = RecentFeedback(ttl_s=60), Topic()
        up = await recent.publish_once(thumbs("up"), topic.publish)
        down = await recent.publish_once(thumbs("down"), topic.publish)
        down_again = await recent.publish_once(thumbs("down"), topic.publish)
        up_again = await recent.publish_once(thumbs("up"), topic.publish)  # back to up: a change again
        commented = await recent.publish_once(thumbs("up", comment="short"), topic.publish)
        return [up, down, down_again, up_again, commented], [e.value for e in topic.events]

    ids, values = run(go())
    assert ids[1] == ids[2] and len({ids[0], ids[1], ids[3], ids[4]}) == 4
    assert values == ["up", "down", "up", "up"]


def test_pairwise_repeats_by_the_chosen_answer_and_users_are_separate():
    async def go():
        recent, topic = RecentFeedback(ttl_s=60), Topic()
        a = [await recent.publish_once(pair(0), topic.publish) for _ in range(2)]
        b = await recent.publish_once(pair(1), topic.publish)
        other_user = await recent.publish_once(pair(1, user="acme:bob"), topic.publish)
        return a, b, other_user, len(topic.events)

    a, b, other_user, published = run(go())
    assert a[0] == a[1] and len({a[0], b, other_user}) == 3 and published == 3


def test_identical_posts_in_flight_together_publish_once():
    async def go():
        recent, topic = RecentFeedback(ttl_s=60), Topic()
        ids = await asyncio.gather(*(recent.publish_once(thumbs(), topic.publish) for _ in range(5)))
        return ids, topic.events

    ids, events = run(go())
    assert len(set(ids)) == 1 and len(events) == 1


def test_a_post_that_could_not_be_stored_is_not_remembered():
    async def go():
        recent, topic = RecentFeedback(ttl_s=60), Topic(fail_first=1)
        with pytest.raises(RuntimeError):
            await recent.publish_once(thumbs(), topic.publish)
        again = thumbs()
        return await recent.publish_once(again, topic.publish), again.event_id, topic.events

    got, fresh_id, events = run(go())
    assert got == fresh_id and [e.event_id for e in events] == [fresh_id]


def test_memory_is_bounded_and_entries_expire():
    now = [0.0]

    async def go():
        recent, topic = RecentFeedback(ttl_s=10, max_keys=2, clock=lambda: now[0]), Topic()
        first = await recent.publish_once(thumbs(user="u1"), topic.publish)
        await recent.publish_once(thumbs(user="u2"), topic.publish)
        await recent.publish_once(thumbs(user="u3"), topic.publish)  # u1 forgotten
        assert len(recent) == 2
        assert await recent.publish_once(thumbs(user="u1"), topic.publish) != first
        stands = await recent.publish_once(thumbs(user="u3"), topic.publish)
        now[0] = 11.0  # past the feedback tokens' lifetime
        assert await recent.publish_once(thumbs(user="u3"), topic.publish) != stands
        return len(topic.events)

    assert run(go()) == 5
