"""Synthetic IOI (indirect object identification) sentences for tools/train_ioi/train.py.

A sentence names two people X and Y ("X and Y went to the park"), then repeats one of them, the
subject S, who gives something to the other, the indirect object IO ("..., S gave a ball to");
the answer is " IO". Both name orders are generated: ABB (X=IO, Y=S) and BAB (X=S, Y=IO).

Held out of training:
  * the tutorial's eight prompts: none of its four name pairs (John/Mary, Tom/James, Dan/Sid,
    Martin/Amy, either order) is ever used together in a training sentence, whatever the template,
    so the tutorial's exact sentences (template "When/After A and B went to the shops/park, B gave
    the bag/the ball/an apple/a drink to" with those pairs) never occur; checked again by
    is_tutorial_like();
  * HELDOUT_TEMPLATES: template shapes never seen in training;
  * a set of held-out names (chosen by the seed) never seen in training.
"""
import random
import re

# Candidate first names; those that are not exactly one GPT-2 token with a leading space are dropped.
CANDIDATE_NAMES = """
John Mary Tom James Dan Sid Martin Amy Michael David Robert William Richard Joseph Thomas Charles
Chris Daniel Matthew Anthony Mark Paul Steven Andrew Kevin Brian George Edward Ryan Jacob Gary
Nicholas Eric Jonathan Stephen Larry Justin Scott Frank Brandon Benjamin Samuel Gregory Alexander
Patrick Jack Dennis Jerry Tyler Aaron Jose Adam Henry Nathan Peter Zach Kyle Walter Harold Jeremy
Ethan Carl Keith Roger Gerald Christian Terry Sean Arthur Austin Noah Lawrence Jesse Joe Bryan Billy
Jordan Albert Dylan Bruce Willie Gabriel Alan Juan Logan Wayne Ralph Roy Eugene Randy Vincent
Russell Louis Philip Bobby Johnny Bradley Patricia Jennifer Linda Elizabeth Barbara Susan Jessica
Sarah Karen Nancy Lisa Betty Margaret Sandra Ashley Kimberly Emily Donna Michelle Dorothy Carol
Amanda Melissa Deborah Stephanie Rebecca Sharon Laura Cynthia Kathleen Helen Anna Shirley Angela
Ruth Brenda Pamela Nicole Katherine Samantha Christine Emma Catherine Virginia Rachel Carolyn Janet
Maria Heather Diane Julie Joyce Victoria Kelly Christina Lauren Joan Olivia Judith Megan Cheryl
Martha Andrea Frances Hannah Ann Gloria Jean Kathryn Alice Teresa Sara Madison Julia Grace Judy
Marie Denise Beverly Amber Theresa Marilyn Danielle Diana Brittany Natalie Sophia Rose Alexis
Charlotte Max Sam Ben Alex Luke Ian Leo Oscar Felix Hugo Lucy Kate Jane Anne Sophie Mia Lily Chloe
Zoe Ruby Ivy Eve Jim Bob Bill Mike Dave Steve Tim Tony Rick Ken Ron Fred Ted Ray Jay Lee Dean Neil
Paula Tina Nina Rita Jill Beth Meg Kim Pat Bella Ellie Leah Debra Evelyn Jacqueline Isabella
""".split()

TUTORIAL_NAMES = ["John", "Mary", "Tom", "James", "Dan", "Sid", "Martin", "Amy"]
TUTORIAL_PAIRS = [frozenset(p) for p in [("John", "Mary"), ("Tom", "James"), ("Dan", "Sid"), ("Martin", "Amy")]]

PLACES = """shops park store school office station restaurant hospital garden house beach market
library cafe river mall zoo museum hotel church farm lake cinema gym bank bakery airport castle
forest bar kitchen theater""".split()

NOUNS = """bag ball apple drink book ring snack gift letter note cake flower key pen hat cup bottle
phone toy orange egg umbrella basket card pencil coat necklace candle watch box sandwich kite
lamp map ticket blanket""".split()

GIVE_VERBS = "gave handed passed threw sent showed brought sold offered lent tossed".split()

# [X] and [Y]: the two names in order; [S]: the repeated subject; {P} place; {O} object phrase;
# {G} giving verb.
TRAIN_TEMPLATES = [
    "When [X] and [Y] went to the {P}, [S] {G} {O} to",
    "After [X] and [Y] went to the {P}, [S] {G} {O} to",
    "Then, [X] and [Y] went to the {P}. [S] {G} {O} to",
    "Then, [X] and [Y] had a lot of fun at the {P}. [S] {G} {O} to",
    "Then, [X] and [Y] were working at the {P}. [S] decided to give {O} to",
    "Then, [X] and [Y] were thinking about going to the {P}. [S] wanted to give {O} to",
    "Then, [X] and [Y] had a long argument. Afterwards [S] said to",
    "Then, [X] and [Y] had a long argument, and afterwards [S] said to",
    "After the lunch, [X] and [Y] went to the {P}. [S] {G} {O} to",
    "Afterwards, [X] and [Y] went to the {P}. [S] {G} {O} to",
    "While [X] and [Y] were working at the {P}, [S] {G} {O} to",
    "While [X] and [Y] were commuting to the {P}, [S] {G} {O} to",
    "When [X] and [Y] got {O} at the {P}, [S] decided to give it to",
    "Friends [X] and [Y] found {O} at the {P}. [S] gave it to",
    "The {P} [X] and [Y] went to had {O}. [S] gave it to",
    "When [X] and [Y] arrived at the {P}, [S] {G} {O} to",
    "[X] and [Y] went to the {P} together. [S] {G} {O} to",
    "Once [X] and [Y] got to the {P}, [S] {G} {O} to",
    "When [X] and [Y] went to the {P}, [S] wrote a letter to",
    "After [X] and [Y] left the {P}, [S] {G} {O} to",
    "Then, [X] and [Y] had a long chat. Afterwards [S] waved to",
    "[X] and [Y] were cooking at the {P}. Then [S] {G} {O} to",
    "As [X] and [Y] walked to the {P}, [S] {G} {O} to",
    "When [X] met [Y] at the {P}, [S] {G} {O} to",
]

HELDOUT_TEMPLATES = [
    "[X] and [Y] were sitting in the {P}. Suddenly, [S] {G} {O} to",
    "Since [X] and [Y] were at the {P}, [S] {G} {O} to",
    "Later that day, [X] and [Y] walked into the {P}. [S] {G} {O} to",
    "Then, [X] and [Y] had a big fight at the {P}. In the end, [S] said sorry to",
    "Before [X] and [Y] went home from the {P}, [S] {G} {O} to",
    "On Monday, [X] and [Y] visited the {P}, and [S] {G} {O} to",
]

PREFIXES = [
    "It was a sunny day.",
    "The weather was cold.",
    "Last week was busy.",
    "This is a short story.",
]

_TUTORIAL_RE = re.compile(
    r"^(When|After) (\w+) and (\w+) went to the (shops|park), (\w+) gave (the bag|the ball|an apple|a drink) to$")


def object_phrase(rng):
    noun = rng.choice(NOUNS)
    art = rng.choice(["a", "the"])
    if art == "a" and noun[0] in "aeiou":
        art = "an"
    return f"{art} {noun}"


def fill(template, x, y, s, rng):
    text = template.replace("[X]", x).replace("[Y]", y).replace("[S]", s)
    text = text.replace("{P}", rng.choice(PLACES))
    text = text.replace("{G}", rng.choice(GIVE_VERBS))
    while "{O}" in text:
        text = text.replace("{O}", object_phrase(rng), 1)
    return text


def is_tutorial_like(text, tutorial_prompts):
    """True for the tutorial's sentences and anything of their exact template with their pairs."""
    if text in tutorial_prompts:
        return True
    m = _TUTORIAL_RE.match(text)
    if m and frozenset((m.group(2), m.group(3))) in TUTORIAL_PAIRS:
        return True
    return False


def sample(rng, templates, names, prefix_prob=0.0, tutorial_prompts=()):
    """One IOI example: (text, io_name, s_name, template_index, pattern)."""
    while True:
        io, s = rng.sample(names, 2)
        if frozenset((io, s)) in TUTORIAL_PAIRS:
            continue
        ti = rng.randrange(len(templates))
        if rng.random() < 0.5:
            x, y, pattern = io, s, "ABB"
        else:
            x, y, pattern = s, io, "BAB"
        text = fill(templates[ti], x, y, s, rng)
        if prefix_prob and rng.random() < prefix_prob:
            text = rng.choice(PREFIXES) + " " + text
        if is_tutorial_like(text, tutorial_prompts):
            continue
        return text, io, s, ti, pattern


def split_names(valid_names, seed, n_heldout):
    """Held-out names: n_heldout names drawn by seed, never a tutorial name."""
    rng = random.Random(seed + 1000)
    pool = [n for n in valid_names if n not in TUTORIAL_NAMES]
    heldout = sorted(rng.sample(pool, n_heldout))
    train = [n for n in valid_names if n not in set(heldout)]
    return train, heldout
