"""IOI prompt pairs of several templates and lengths, for the Ray tests and tools/bench/ray_bench.py
(which imports this file): the subject repeated in the clean prompt, the indirect object in the
corrupted one (as the tutorial's), the answer the name not repeated."""

from __future__ import annotations

import random

NAMES = [" John", " Mary", " Tom", " James", " Dan", " Sid", " Martin", " Amy"]
PLACES = ["shops", "park", "school", "station"]
OBJECTS = ["the bag", "a drink", "an apple", "the ball"]
TEMPLATES = [
    "When{X} and{Y} went to the {P},{S} gave {O} to",
    "Then,{X} and{Y} had a long argument. Afterwards{S} said to",
    "After the lunch,{X} and{Y} went to the {P}.{S} gave {O} to",
    "Friends{X} and{Y} found {O} at the {P}.{S} gave it to",
]


def ioi_pairs(n: int, seed: int = 0) -> list:
    """IOI pairs of several lengths: the subject repeated in the clean prompt, the indirect object
    in the corrupted one (as the tutorial's), the answer the name not repeated."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.choice(TEMPLATES)
        io, s = rng.sample(NAMES, 2)
        x, y = (io, s) if rng.random() < 0.5 else (s, io)
        fill = {"X": x, "Y": y, "P": rng.choice(PLACES), "O": rng.choice(OBJECTS)}
        out.append({"clean": t.format(S=s, **fill), "corrupted": t.format(S=io, **fill),
                    "correct": io, "incorrect": s})
    return out
