"""Stories in the style of the bAbI tasks (Weston et al., 2015), generated from a seeded world.

    story = make_story("qa2", np.random.default_rng(0))
    story.facts      # ["Sandra went to the garden.", "Sandra picked up the milk.", "Sandra moved to the office.", ...]
    story.question   # "Where is the milk?"
    story.answer     # "office"
    story.others     # the story's other questions with their answers: (("Where is the apple?", "garden"), ...)

- qa1, single supporting fact: people move between places; "Where is X?" asks for X's last place.
- qa2, two supporting facts: people also pick up and drop objects; "Where is the O?" asks for the
  place of an object, which its carrier has taken along (the pick-up and the carrier's last move).
- qa3, three supporting facts: "Where was the O before the P?" asks for the place an object was
  in just before it reached P, its current place (pick-up, and the carrier's last two moves).

Every sentence is one event of a simulated world, so every answer follows from the story alone:
a person is somewhere once they have moved, an object is picked up only by someone in the same
place (or, while nobody has seen it, by anyone who is somewhere) and only when nobody holds it,
and it is dropped where its carrier stands. Sentences that do not bear on the question stay in
the story as distractors, as in bAbI. Answers are one word (a place).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PEOPLE = ("Mary", "John", "Daniel", "Sandra")
PLACES = ("kitchen", "garden", "hallway", "bathroom", "bedroom", "office")
OBJECTS = ("apple", "football", "milk")
MOVES = ("went to the {}.", "journeyed to the {}.", "travelled to the {}.", "moved to the {}.", "went back to the {}.")
TAKES = ("picked up the {}.", "got the {}.", "grabbed the {}.", "took the {}.")
DROPS = ("dropped the {}.", "discarded the {}.", "put down the {}.", "left the {}.")
TASKS = ("qa1", "qa2", "qa3")
# Story sentences per task (bAbI's own stories grow with the task's need for supporting facts).
STORY_LENGTH = {"qa1": (2, 10), "qa2": (6, 16), "qa3": (8, 20)}


@dataclass(frozen=True)
class Story:
    facts: tuple[str, ...]  # the story's sentences, in order
    question: str
    answer: str  # one word
    others: tuple[tuple[str, str], ...] = ()  # every other question of the task the story answers, with answers


class World:
    """Where everyone and everything is; each event returns its sentence."""

    def __init__(self):
        self.place: dict[str, str] = {}  # person -> place (once they have moved)
        self.holder: dict[str, str] = {}  # object -> person holding it
        self.trail: dict[str, list[str]] = {}  # object -> its places so far, consecutive ones distinct

    def object_place(self, obj: str) -> str | None:
        return self.place.get(self.holder[obj]) if obj in self.holder else (self.trail.get(obj) or [None])[-1]

    def _arrive(self, obj: str, place: str) -> None:
        trail = self.trail.setdefault(obj, [])
        if not trail or trail[-1] != place:
            trail.append(place)

    def move(self, person: str, place: str, rng) -> str:
        self.place[person] = place
        for obj, who in self.holder.items():
            if who == person:
                self._arrive(obj, place)
        return f"{person} {MOVES[rng.integers(len(MOVES))].format(place)}"

    def take(self, person: str, obj: str, rng) -> str:
        self.holder[obj] = person
        self._arrive(obj, self.place[person])
        return f"{person} {TAKES[rng.integers(len(TAKES))].format(obj)}"

    def drop(self, person: str, obj: str, rng) -> str:
        del self.holder[obj]
        return f"{person} {DROPS[rng.integers(len(DROPS))].format(obj)}"

    def events(self, with_objects: bool) -> list[tuple]:
        """Every event possible now: (kind, person, what)."""
        out = [("move", p, place) for p in PEOPLE for place in PLACES if self.place.get(p) != place]
        if with_objects:
            for p in self.place:
                out += [("drop", p, o) for o, who in self.holder.items() if who == p]
                out += [("take", p, o) for o in OBJECTS
                        if o not in self.holder and self.object_place(o) in (None, self.place[p])]
        return out


def _questions(task: str, world: World) -> list[tuple[str, str]]:
    """Every question of `task` the story answers, with its answer (none: the story sets up no question)."""
    if task == "qa1":
        return [(f"Where is {p}?", world.place[p]) for p in PEOPLE if p in world.place]
    moved = [o for o in OBJECTS if len(world.trail.get(o, ())) >= 2]  # objects carried (their first place alone
    if task == "qa2":                                                   # is not the answer)
        return [(f"Where is the {o}?", world.object_place(o)) for o in moved]
    return [(f"Where was the {o} before the {world.trail[o][-1]}?", world.trail[o][-2]) for o in moved]


def make_story(task: str, rng: np.random.Generator) -> Story:
    """One story of `task` (qa1, qa2, qa3) drawn from rng."""
    if task not in TASKS:
        raise ValueError(f"unknown bAbI task {task!r}; choose one of {', '.join(TASKS)}")
    low, high = STORY_LENGTH[task]
    while True:  # a story whose events never set up the task's question is drawn again
        world, facts = World(), []
        for _ in range(int(rng.integers(low, high + 1))):
            options = world.events(with_objects=task != "qa1")
            kind, person, what = options[rng.integers(len(options))]
            facts.append(getattr(world, kind)(person, what, rng))
        asked = _questions(task, world)
        if asked:
            pick = int(rng.integers(len(asked)))
            return Story(tuple(facts), *asked[pick], others=tuple(asked[:pick] + asked[pick + 1:]))


def whereabouts(facts) -> dict[str, str]:
    """Where each person who moved is at the end of a story: the place of their last move (the
    only sentences that end in a place)."""
    where = {}
    for fact in facts:
        words = fact.rstrip(".").split()
        if words[-1] in PLACES:
            where[words[0]] = words[-1]
    return where


def every_sentence(task: str) -> tuple[list[str], list[str]]:
    """Every story sentence and every question `task` can produce (to bound a story's length)."""
    facts = [f"{p} {m.format(place)}" for p in PEOPLE for m in MOVES for place in PLACES]
    if task != "qa1":
        facts += [f"{p} {v.format(o)}" for p in PEOPLE for v in (*TAKES, *DROPS) for o in OBJECTS]
    questions = {"qa1": [f"Where is {p}?" for p in PEOPLE], "qa2": [f"Where is the {o}?" for o in OBJECTS],
                 "qa3": [f"Where was the {o} before the {place}?" for o in OBJECTS for place in PLACES]}[task]
    return facts, questions
