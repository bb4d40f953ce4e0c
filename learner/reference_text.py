"""A fixed reference text: every version's perplexity is measured on these paragraphs.

Plain English prose written for this project (no outside source), kept unchanged so that the
perplexity of two versions, or of one version and the base model, can be compared. Changing a
word changes every figure measured afterwards: add a new constant instead.
"""

REFERENCE_PARAGRAPHS = (
    "On most mornings the harbour is quiet before the sun comes up. A few boats leave early, their "
    "engines low and steady, and the gulls follow them out past the stone wall. By the time the cafe "
    "on the corner opens its shutters, the first crates of fish are already on the quay, and the "
    "smell of salt and diesel drifts up the narrow street towards the market.",

    "The market itself is older than anyone in the town can remember. Farmers from the valley bring "
    "cheese, apples and bread, and in the autumn there are baskets of mushrooms that people queue for "
    "before dawn. Prices are written in chalk on small boards, and most of the sellers know their "
    "customers by name. When it rains, everyone crowds under the long iron roof and waits.",

    "A good recipe is a small promise. It says that if you follow a few careful steps, the result "
    "will be worth the effort. To make a simple soup, soften an onion in a little butter, add two "
    "chopped carrots and a potato, cover them with stock and let everything simmer until soft. Season "
    "it with salt and pepper, blend it if you like, and serve it with fresh bread.",

    "Learning a new skill rarely happens in a straight line. For a while nothing seems to change, and "
    "then one day a task that felt impossible becomes easy. Teachers often say that practice matters "
    "more than talent, and that short sessions every day work better than long ones once a week. "
    "Mistakes are part of the process, because each one shows what to try next.",

    "In the evening the wind usually drops, and the water in the harbour turns smooth and grey. Lights "
    "come on in the windows above the shops, and the last boats return with their nets folded on deck. "
    "Children run along the wall while their parents talk, and somewhere a radio plays an old song. "
    "Then the town grows quiet again, and waits for the morning.",
)
