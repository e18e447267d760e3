"""A deterministic chat history for retrieval tests: planted facts, paraphrased questions about
them, and filler turns that talk around them without stating them.

Each planted fact fills one *slot* (where the user's sibling lives, what they are allergic to, ...)
with values that change from scope to scope, so a memory recalled from another scope is told
apart by its text. Each slot has two questions that ask for it in other words than the fact's
own (a few share a word where no natural question avoids it). Filler turns (the user's and the
persona's) mention the same people, places and topics but never state a slot's value, so a
question has one right answer in its scope; the persona's canon may still compete (Juniper's
sister, cat, home town, age and degree are all on her card). English, hand-written templates:
no downloads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["PLANTED_SLOTS", "PlantedFact", "Slot", "filler_turns", "planted_facts", "user_messages"]


@dataclass(frozen=True)
class Slot:
    """One thing a user may tell: a template with ``{value}`` fields, the values each scope
    draws from, and two questions asking for it in other words."""

    name: str
    template: str
    values: tuple[dict[str, str], ...]
    questions: tuple[str, str]


@dataclass(frozen=True)
class PlantedFact:
    """A slot's turn as one scope's user said it, and the questions asking it back."""

    slot: str
    text: str
    questions: tuple[str, str]


def _values(field: str, *options: str) -> tuple[dict[str, str], ...]:
    return tuple({field: option} for option in options)


PLANTED_SLOTS: tuple[Slot, ...] = (
    Slot(
        "sibling_home",
        "My sister {name} moved to {city} last spring.",
        tuple(
            {"name": n, "city": c}
            for n, c in (
                ("Maya", "Lisbon"),
                ("Noor", "Tallinn"),
                ("Greta", "Valparaiso"),
                ("Ines", "Bergen"),
                ("Tamsin", "Hobart"),
                ("Lucia", "Trieste"),
            )
        ),
        ("Where does my sibling live now?", "Which town is she based in these days, my sis?"),
    ),
    Slot(
        "allergy",
        "Turns out I'm allergic to {value}, found that out the hard way at a wedding.",
        _values("value", "peanuts", "shellfish", "sesame", "kiwi fruit", "cashews", "mustard"),
        ("What can't I eat without getting sick?", "Which food gives me a bad reaction?"),
    ),
    Slot(
        "dog_name",
        "My dog's name is {value}, he's a scruffy little terrier.",
        _values("value", "Biscuit", "Pickles", "Waffles", "Rocket", "Mochi", "Bramble"),
        ("What's my pup called?", "Remind me what I named my pet?"),
    ),
    Slot(
        "job",
        "I work as a {value} at the hospital downtown.",
        _values(
            "value",
            "radiographer",
            "pharmacist",
            "night porter",
            "dietitian",
            "midwife",
            "lab technician",
        ),
        ("What do I do for a living?", "What's my profession again?"),
    ),
    Slot(
        "hometown",
        "I grew up in {value}, a tiny place by the sea.",
        _values("value", "Whitby", "Dingle", "Tofino", "Ericeira", "Kinsale", "Stromness"),
        ("Where did I spend my childhood?", "What town was I raised in?"),
    ),
    Slot(
        "age",
        "I'm {value} years old and already feeling ancient.",
        _values("value", "29", "31", "27", "38", "42", "25"),
        ("How many birthdays have I had?", "What's my age?"),
    ),
    Slot(
        "birthday",
        "My birthday is on the {day} of {month}, put it in your calendar!",
        tuple(
            {"day": d, "month": m}
            for d, m in (
                ("14th", "March"),
                ("2nd", "November"),
                ("21st", "June"),
                ("9th", "January"),
                ("30th", "August"),
                ("5th", "October"),
            )
        ),
        ("When should you wish me many happy returns?", "What date do I celebrate each year?"),
    ),
    Slot(
        "instrument",
        "I've been playing the {value} since I was nine.",
        _values("value", "cello", "trumpet", "banjo", "clarinet", "accordion", "harp"),
        ("Which musical instrument do I know?", "What do I make music on?"),
    ),
    Slot(
        "car",
        "I drive an old {colour} {model} that keeps breaking down.",
        tuple(
            {"colour": c, "model": m}
            for c, m in (
                ("green", "Volvo estate"),
                ("red", "Fiat Panda"),
                ("blue", "Saab 900"),
                ("white", "Renault Clio"),
                ("yellow", "VW Beetle"),
                ("grey", "Honda Civic"),
            )
        ),
        ("What vehicle do I own?", "What kind of automobile is mine?"),
    ),
    Slot(
        "partner",
        "My girlfriend is called {value}, we met at a climbing gym.",
        _values("value", "Priya", "Freya", "Camille", "Yuki", "Beatriz", "Orla"),
        ("Who am I dating?", "What's the name of the person I'm in a relationship with?"),
    ),
    Slot(
        "favourite_food",
        "My favourite food is {value}, I could eat it every day.",
        _values(
            "value", "pad thai", "mushroom risotto", "pierogi", "ramen", "moussaka", "fish tacos"
        ),
        ("What dish do I love most?", "If you cooked for me, which meal would make me happiest?"),
    ),
    Slot(
        "fear",
        "I'm terrified of {value}, always have been.",
        _values("value", "spiders", "deep water", "heights", "moths", "thunderstorms", "clowns"),
        ("What scares me?", "What's my phobia?"),
    ),
    Slot(
        "language",
        "I'm learning {value} on an app every morning before work.",
        _values("value", "Portuguese", "Japanese", "Finnish", "Korean", "Greek", "Dutch"),
        ("Which foreign tongue am I studying?", "What language am I practising?"),
    ),
    Slot(
        "honeymoon",
        "We're going to {value} for our honeymoon in May.",
        _values("value", "Iceland", "Vietnam", "Patagonia", "Sicily", "Zanzibar", "Norway"),
        ("Where are we travelling after the wedding?", "Where's our big trip as newlyweds?"),
    ),
    Slot(
        "degree",
        "I studied {value} at university, not that I use it.",
        _values(
            "value",
            "philosophy",
            "marine biology",
            "economics",
            "art history",
            "civil engineering",
            "linguistics",
        ),
        ("What was my degree in?", "What did I major in at college?"),
    ),
    Slot(
        "injury",
        "I broke my {value} skateboarding when I was fifteen.",
        _values("value", "left wrist", "collarbone", "right ankle", "nose", "left arm", "two ribs"),
        ("Have I ever fractured a bone?", "What injury did I have as a teenager?"),
    ),
    Slot(
        "team",
        "I support {value}, I never miss a match.",
        _values("value", "Celtic", "Ajax", "Benfica", "Napoli", "Boca Juniors", "Feyenoord"),
        ("Which football club am I a fan of?", "Who do I cheer for in soccer?"),
    ),
    Slot(
        "diet",
        "I've been vegetarian for {value} years now.",
        _values("value", "six", "ten", "three", "twelve", "eight", "five"),
        ("Do I eat meat?", "What are my dietary restrictions?"),
    ),
    Slot(
        "child",
        "My son {value} just started kindergarten, he's so proud of his backpack.",
        _values("value", "Milo", "Arlo", "Teo", "Finn", "Ezra", "Jonah"),
        ("What's my little boy's name?", "How is my kid getting on at school?"),
    ),
    Slot(
        "coffee",
        "I always order an {value}, nothing else.",
        _values(
            "value",
            "oat milk flat white",
            "iced americano",
            "cortado",
            "double espresso",
            "almond latte",
            "cappuccino with cinnamon",
        ),
        ("How do I take my coffee?", "What's my usual drink at the café?"),
    ),
    Slot(
        "home",
        "I live in {value} now, in a flat above a bakery.",
        _values("value", "Leeds", "Ghent", "Montreal", "Wellington", "Gothenburg", "Porto"),
        ("Which city is my home?", "Where's my apartment located?"),
    ),
    Slot(
        "mother_job",
        "My mum is a retired {value}.",
        _values(
            "value", "headteacher", "firefighter", "tax inspector", "vet", "bus driver", "judge"
        ),
        ("What did my mother do for work?", "What was my mom's career?"),
    ),
    Slot(
        "club",
        "I run a small {value} club on Thursday evenings.",
        _values("value", "board game", "book", "chess", "film", "running", "knitting"),
        ("What group do I organise every week?", "What do I host on weeknights?"),
    ),
    Slot(
        "sleep",
        "I can't get any rest without {value}.",
        _values(
            "value",
            "white noise from a fan",
            "earplugs",
            "a weighted blanket",
            "the window open",
            "an eye mask",
            "rain sounds on my phone",
        ),
        ("What do I need to fall asleep?", "What helps me nod off at night?"),
    ),
)


def planted_facts(scope_index: int, slots: int | None = None) -> list[PlantedFact]:
    """The facts of the ``scope_index``-th scope (values differ between scopes 0 to 5)."""
    chosen = PLANTED_SLOTS[:slots] if slots is not None else PLANTED_SLOTS
    return [
        PlantedFact(
            slot.name,
            slot.template.format(**slot.values[scope_index % len(slot.values)]),
            slot.questions,
        )
        for slot in chosen
    ]


# -- filler ------------------------------------------------------------------------------------

_NAMES = (
    "Tom",
    "Lena",
    "Ravi",
    "Sofia",
    "Omar",
    "Jonas",
    "Aiko",
    "Pablo",
    "Hannah",
    "Kwame",
    "Elif",
    "Marco",
    "Zoe",
    "Dmitri",
    "Chloe",
    "Sam",
    "Amara",
    "Lukas",
    "Nadia",
    "Felix",
)
_RELATIVES = (
    "sister",
    "brother",
    "mum",
    "dad",
    "cousin",
    "aunt",
    "uncle",
    "grandma",
    "girlfriend",
    "son",
    "neighbour",
    "best friend",
)
_PLACES = (
    "Lisbon",
    "Oslo",
    "Berlin",
    "Kyoto",
    "Lima",
    "Austin",
    "Cork",
    "Marseille",
    "Leeds",
    "Tallinn",
    "Naples",
    "Quebec",
    "Seville",
    "Dublin",
    "Prague",
    "Bristol",
)
_SPOTS = (
    "the market",
    "the park",
    "the library",
    "the gym",
    "the station",
    "the pub",
    "the garden centre",
    "the beach",
    "the bakery",
    "the cinema",
    "the office",
    "the pool",
)
_FOODS = (
    "lasagne",
    "curry",
    "pancakes",
    "soup",
    "a burrito",
    "sushi",
    "a sandwich",
    "dumplings",
    "pizza",
    "a salad",
    "noodles",
    "stew",
    "toast",
    "chili",
    "falafel",
)
_SHOWS = (
    "a crime drama",
    "a baking show",
    "a nature documentary",
    "an anime",
    "a sitcom",
    "a horror film",
    "a space series",
    "a cooking competition",
    "a true crime podcast",
)
_GAMES = (
    "Stardew Valley",
    "Zelda",
    "chess online",
    "Mario Kart",
    "Minecraft",
    "a puzzle game",
    "Hades",
    "Tetris",
    "a card game",
)
_PLANTS = (
    "monstera",
    "fern",
    "basil",
    "cactus",
    "orchid",
    "fiddle leaf fig",
    "tomato plant",
    "snake plant",
    "peace lily",
    "succulent",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WEATHER = ("rainy", "windy", "freezing", "sunny", "muggy", "foggy", "grey")
_FEELINGS = ("tired", "happy", "stressed", "bored", "anxious", "excited", "grumpy", "calm")
_CHORES = (
    "laundry",
    "the dishes",
    "vacuuming",
    "my taxes",
    "groceries",
    "cleaning the fridge",
    "fixing the shelf",
    "answering emails",
)

_USER_TEMPLATES = (
    "Had {food} for lunch at {spot} with {name}.",
    "It's so {weather} here today, I barely left the house.",
    "I'm feeling pretty {feeling} this {day}.",
    "Watched {show} last night, it was better than I expected.",
    "{name} and I played {game} until two in the morning.",
    "My {plant} has yellow leaves again, what am I doing wrong?",
    "Spent the whole {day} on {chore}, so boring.",
    "Do you think I should repot the {plant} before winter?",
    "{name} told me a ridiculous story about {place}.",
    "I walked to {spot} and it was packed.",
    "Ugh, I forgot {name}'s party on {day}.",
    "We might do a weekend trip to {place} at some point.",
    "Saw a photo of {place} and now I want to go.",
    "My {relative} called about {chore} again.",
    "Cooked {food} tonight, it turned out okay.",
    "Do you ever get {feeling} for no reason?",
    "Finally finished {chore}, I deserve a nap.",
    "{name} recommended {show}, have you heard of it?",
    "I bought a {plant} at {spot}, fingers crossed it survives.",
    "My {relative} says hi, by the way.",
    "Lost three rounds of {game} to {name}, I'm humiliated.",
    "Traffic was terrible on the way to {spot}.",
    "What's the best way to keep a {plant} alive indoors?",
    "I had a weird dream about {place} and {name}.",
    "Going to {spot} with my {relative} on {day}.",
    "Not much going on, just {chore} and {show}.",
    "I can't decide between {food} and {food2} for dinner.",
    "Coffee with {name} at {spot} was nice.",
    "The news from {place} this week was wild.",
    "{name} is moving house and asked me to help on {day}.",
    "My {relative} and I argued about {show} again.",
    "I tried meditating this morning, felt {feeling} after.",
    "Rain is forecast all {day}, so it's {game} and {food}.",
    "Do you like {food}? I'm obsessed lately.",
    "My back hurts from carrying groceries up from {spot}.",
    "I'm reading a book set in {place}, it's gorgeous.",
    "{name} got a new job in {place}, I'm happy for them.",
    "Should I text {name} back or wait?",
    "My {relative} sent me a {plant} cutting.",
    "The heating broke again, it's {weather} inside.",
    "I finally cleaned up the balcony, the {plant} looks happier.",
    "Thinking about learning to bake bread.",
    "I stayed up too late watching {show}.",
    "Remember when you told me about your greenhouse? How is it going?",
    "What would you plant in a {weather} corner of a garden?",
    "{name} and my {relative} finally met, it went fine.",
    "I'm saving up for a trip, maybe {place}, maybe {place2}.",
    "Had a long call with my {relative} about nothing in particular.",
    "The bus to {spot} was late twice this week.",
    "My neighbour's cat keeps visiting my balcony.",
)
_USER_TAILS = (
    "",
    "",
    "",
    " Anyway.",
    " lol",
    " Long day.",
    " Hope you're well!",
    " Just saying.",
    " Not sure why I'm telling you this.",
    " Ha.",
)
_SHORT = (
    "haha yes",
    "ok that's fair",
    "lol",
    "hmm maybe",
    "true",
    "good point",
    "thanks!",
    "night night",
    "morning!",
    "ugh",
    "I guess so",
    "sounds good",
    "wait really?",
)
_ASSISTANT_TEMPLATES = (
    "That sounds like a lovely {day}. Did you get some rest afterwards?",
    "Oh, {food} is a good choice. Do you cook it yourself?",
    "A {plant} usually wants bright indirect light and not too much water.",
    "{place} sounds wonderful. What drew you to it?",
    "I'm sorry you're feeling {feeling}. Want to talk about it?",
    "Ha, {name} sounds like a character. What happened next?",
    "I've never watched {show}, but I'd love to hear what you thought.",
    "The greenhouse is busy this week; we're potting up seedlings.",
    "{chore} always takes longer than it should, doesn't it?",
    "Yellow leaves on a {plant} often mean too much water. Let the soil dry out a bit.",
    "A {weather} day is a good excuse to stay in with {game}.",
    "That's kind of you to help {name}. Moving house is a lot.",
    "Tell me more about {place}; I've only seen pictures.",
    "You deserve that nap. Be gentle with yourself.",
    "I'd keep a {plant} near an east window if you have one.",
)


def _fill(rng: random.Random, template: str) -> str:
    return template.format(
        name=rng.choice(_NAMES),
        relative=rng.choice(_RELATIVES),
        place=rng.choice(_PLACES),
        place2=rng.choice(_PLACES),
        spot=rng.choice(_SPOTS),
        food=rng.choice(_FOODS),
        food2=rng.choice(_FOODS),
        show=rng.choice(_SHOWS),
        game=rng.choice(_GAMES),
        plant=rng.choice(_PLANTS),
        day=rng.choice(_DAYS),
        weather=rng.choice(_WEATHER),
        feeling=rng.choice(_FEELINGS),
        chore=rng.choice(_CHORES),
    )


def user_messages(rng: random.Random, count: int) -> list[str]:
    """``count`` user turns: one to three templated sentences, or a short reaction (1 in 8)."""
    messages = []
    for _ in range(count):
        if rng.random() < 0.125:
            messages.append(rng.choice(_SHORT))
            continue
        sentences = rng.choices((1, 2, 3), weights=(6, 3, 1))[0]
        text = " ".join(_fill(rng, rng.choice(_USER_TEMPLATES)) for _ in range(sentences))
        messages.append(text + rng.choice(_USER_TAILS))
    return messages


def filler_turns(seed: int, count: int) -> list[tuple[str, str]]:
    """``count`` ``(role, text)`` turns, about 60% the user's and 40% the persona's replies,
    none stating a planted slot's value; the same ``seed`` gives the same turns."""
    rng = random.Random(seed)
    turns: list[tuple[str, str]] = []
    for _ in range(count):
        if rng.random() < 0.4:
            turns.append(("assistant", _fill(rng, rng.choice(_ASSISTANT_TEMPLATES))))
        else:
            turns.append(("user", user_messages(rng, 1)[0]))
    return turns
