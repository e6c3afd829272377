"""Generated caption pools with planted duplicates: ground truth for near-duplicate tests and benchmarks.

Distinct captions are drawn from large slot vocabularies (so two of them share few words);
near duplicates are edits of an earlier caption of the kinds web pools are full of: re-cased,
re-punctuated, clauses reordered, one word reworded, the tail truncated.
"""
from __future__ import annotations

import random

SUBJECTS = """golden retriever|tabby cat|old fisherman|young dancer|red vintage car|wooden sailboat|hot air balloon|glass teapot
|street musician|snowy owl|steam locomotive|bowl of ramen|lighthouse keeper|mountain goat|paper lantern|bicycle courier|marble statue
|flock of flamingos|desert fox|cargo ship|stone bridge|wind turbine|chess player|koi fish|vintage typewriter|ballerina|farmer|astronaut
|motorcycle|piano|elephant calf|origami crane|treehouse|firefighter|harp seal|violinist|tugboat|windmill|peacock|camper van|diver
|blacksmith|carousel|beekeeper|sushi chef|sea turtle|robot|scarecrow|zebra|canoe""".replace("\n", "").split("|")
ADJECTIVES = """weathered|gleaming|tiny|enormous|colorful|rusty|elegant|sleepy|curious|ancient|futuristic|muddy|shiny|fluffy|lonely
|cheerful|majestic|battered|polished|striped|spotted|frosted|painted|broken|crowded|quiet|noisy|dusty|velvet|crystal""".replace("\n", "").split("|")
ACTIONS = """resting|standing|waiting|glowing|floating|drifting|parked|perched|running|sleeping|leaning|hiding|dancing|reflected
|framed|surrounded by fog|lit by candles|covered in snow|half buried in sand|casting long shadows""".replace("\n", "").split("|")
PLACES = """on a rainy street in Tokyo|beside a calm lake at dawn|in an autumn forest|in a sunlit kitchen|under a starry sky
|on a crowded beach|in a quiet library|near a busy harbor|on a cobblestone square|over a field of sunflowers|inside a greenhouse
|at the edge of a cliff|in a neon lit alley|on a frozen pond|in a bamboo grove|beneath a stone archway|on a desert highway
|in a flooded cathedral|beside a roaring waterfall|on a rooftop garden|in a misty valley|at a night market|on a snowy mountain pass
|inside a glass dome|along a canal in Venice|in a lavender field|under a cherry blossom tree|on a wooden pier|in a cluttered workshop
|at a train station""".replace("\n", "").split("|")
STYLES = """with soft morning light|with warm golden tones|with vivid saturated colors|with a shallow depth of field
|with dramatic sunset colors|with high contrast shadows|with a misty atmosphere|with pastel colors|in black and white
|shot on 35mm film|as a watercolor painting|as an oil painting|in a minimalist style|with cinematic lighting|with a fisheye lens
|from a low angle|from a bird's eye view|with long exposure light trails|with bokeh in the background|in studio lighting""".replace("\n", "").split("|")
DETAILS = """a red umbrella nearby|puddles reflecting the lights|leaves scattered on the ground|a flock of birds overhead
|steam rising in the air|a distant mountain range|children playing in the background|a string of fairy lights|an old clock tower
|a wooden fence|a row of parked bicycles|rain streaks on the glass|snowflakes falling gently|a rainbow in the sky|lanterns hanging above
|a curious dog watching|a stack of old books|wildflowers in the foreground|a tram passing by|a crescent moon""".replace("\n", "").split("|")
SWAPS = {"tiny": "small", "enormous": "huge", "quiet": "silent", "shiny": "glossy", "resting": "lying", "glowing": "shining",
         "old": "aged", "calm": "still", "busy": "bustling", "soft": "gentle", "warm": "cozy", "vivid": "bright", "red": "crimson"}


def distinct_caption(rng: random.Random) -> str:
    return (f"A {rng.choice(ADJECTIVES)} {rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}, "
            f"{rng.choice(STYLES)}, {rng.choice(DETAILS)} and {rng.choice(DETAILS)}.")


def near_variant(caption: str, kind: str, rng: random.Random) -> str:
    """One edit of `kind`: recased | punctuation | reordered | reworded | truncated."""
    if kind == "recased":
        return caption.upper() if rng.random() < 0.5 else caption.title()
    if kind == "punctuation":
        return caption.replace(",", "").rstrip(".") + rng.choice(["!", " ...", ";", ""])
    if kind == "reordered":  # the clauses after the first comma come first
        head, _, tail = caption.rstrip(".").partition(", ")
        return f"{tail[0].upper()}{tail[1:]}, {head[0].lower()}{head[1:]}."
    if kind == "reworded":
        words = caption.split()
        spots = [i for i, w in enumerate(words) if w.strip(",.").lower() in SWAPS]
        if not spots:
            return caption.replace("A ", "One ", 1)
        i = rng.choice(spots)
        words[i] = words[i].lower().replace(words[i].strip(",.").lower(), SWAPS[words[i].strip(",.").lower()])
        return " ".join(words)
    if kind == "truncated":  # at most a tenth of the words, at least one
        words = caption.split()
        return " ".join(words[: len(words) - max(1, len(words) // 10)])
    raise ValueError(kind)


NEAR_KINDS = ("recased", "punctuation", "reordered", "reworded", "truncated")


def planted_pool(n: int, near_fraction: float = 0.1, exact_fraction: float = 0.02, seed: int = 0) -> tuple[list[str], dict[int, int]]:
    """`n` captions; returns (captions, {index of a planted near duplicate: index of its original}).

    Exact copies are planted too (they are exact dedup's business, and not in the map).
    """
    rng = random.Random(seed)
    captions: list[str] = []
    truth: dict[int, int] = {}
    seen: set[str] = set()
    while len(captions) < n:
        r = rng.random()
        if captions and r < near_fraction + exact_fraction:
            src = rng.randrange(max(0, len(captions) - 1000), len(captions))
            src = truth.get(src, src)  # edits are made of originals, never of edits
            if r < near_fraction:
                truth[len(captions)] = src
                captions.append(near_variant(captions[src], rng.choice(NEAR_KINDS), rng))
            else:
                captions.append(captions[src])
        else:
            c = distinct_caption(rng)
            if c in seen:
                continue
            seen.add(c)
            captions.append(c)
    return captions, truth
