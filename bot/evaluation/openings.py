"""The bundled conversation openings of the stability harness, and the user's names.

Each opening is the user's first few lines, written to suit any persona (small talk, a
question about them, something on the user's mind); the simulated user continues from there.
``CONTINUATIONS`` stand in when the user model gives nothing usable.
"""

from __future__ import annotations

__all__ = ["CONTINUATIONS", "OPENINGS", "USER_NAMES"]

OPENINGS: tuple[tuple[str, ...], ...] = (
    (
        "Hi there. Mind if I sit down for a bit?",
        "Long day. I just needed to talk to someone.",
        "What have you been up to today?",
    ),
    (
        "Hey! I've heard a lot about you.",
        "Is it true what people say about you?",
        "So what's your story?",
    ),
    (
        "Evening. It's quiet tonight.",
        "I can't sleep, my head is full of stuff.",
        "Do you ever feel like that?",
    ),
    (
        "Hello! First time here, so be nice.",
        "I'm trying to figure out what to do with my life.",
        "How did you end up doing what you do?",
    ),
    (
        "Hi. Can I ask you something a bit odd?",
        "If you could be anywhere right now, where would it be?",
        "Why there?",
    ),
    (
        "Hey, it's me again.",
        "I finally did the thing I kept putting off.",
        "Aren't you going to ask me how it went?",
    ),
    (
        "Good to see you.",
        "A friend said I should come and talk to you.",
        "She said you give good advice. Do you?",
    ),
    (
        "Hi! I brought snacks.",
        "Okay, tell me something nobody knows about you.",
        "Come on, just one thing.",
    ),
)

CONTINUATIONS: tuple[str, ...] = (
    "Tell me more about that.",
    "Huh. Why do you say that?",
    "What happened next?",
    "That's interesting. What else?",
    "How do you feel about that?",
    "Really? I didn't expect that.",
    "Okay, different question: what makes you happy?",
    "Go on, I'm listening.",
)

USER_NAMES: tuple[str, ...] = ("Alex", "Sam", "Robin", "Jordan", "Casey", "Morgan", "Riley")
