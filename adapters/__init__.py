"""Adapter versions and hot-swap, in one place; serving and the learner both stand on it.

    store.py          the adapter store: write a version atomically, verify, resolve, list
    manifest.py       a version's manifest and the check that its folder is what it says
    peft_check.py     checks on an adapter a person brings (`rlhf adapters publish PATH`)
    routing_state.py  active / canary / history as a pure function of `rlhf.adapters`
    snapshot.py       that state on disk (`routing.json`), for replicas that start late
    announcements.py  the topic: signature, verify-then-apply, read from offset 0, replay, announce (signed)
    signing.py        Ed25519 keys by key id, signing and checking routing events, development keys
    cache.py          the private, read-only copy of a version that engines load, verified after copying
    router.py         per request: which loaded version answers it (sticky canary by user)
    follower.py       a serving replica's loop: announcement -> signature -> verify -> private copy
                      -> engine.add_lora -> switch the router -> evict

The learner writes versions (learner/publish.py) and follows routing with the same state
machine (learner/store.py); serving passes its engine to the follower (serving/app.py).
Nothing here imports serving or learner.
"""
