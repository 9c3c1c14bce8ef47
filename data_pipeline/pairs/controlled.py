"""A controlled response generator: text that satisfies exactly the constraints it is told to, and no others.

The RPO mechanism (docs/algorithms.md §5) is a claim about instruction reading. To test it apart from a sampler's
quirks, responses here are written, not sampled: each one follows a given verdict vector v over its instruction's
K constraints (v[k] = must the response satisfy constraint k?), and every constraint's satisfaction is visible in
the text (case, quotation marks, a title, a postscript, an end phrase, commas, a keyword, a forbidden word, bullets,
placeholders, highlights). Features the instruction does not ask about are drawn at random, so that nothing about a
response alone says whether it is the compliant one. Every rendered response is re-checked with the project's
IFEval checkers (`data_pipeline.constraints.check`); a mismatch is redrawn, and a plan that keeps failing raises.

The body is a few sentences about the instruction's topic from a fixed bank that avoids every keyword and
forbidden word the constraints can name (`tests/test_controlled_pairs.py` checks this).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from data_pipeline import constraints as cons
from data_pipeline.constraints.ifeval import conflicting_ids
from data_pipeline.pairs.synthesis import END_PHRASES, FORBIDDEN, KEYWORDS, PARAM_SAMPLERS

# The constraint ids whose satisfaction the generator controls, each visible in the text.
CONTROLLED_TYPES = (
    "change_case:english_capital",
    "change_case:english_lowercase",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections",
    "detectable_format:title",
    "keywords:existence",
    "keywords:forbidden_words",
    "punctuation:no_comma",
    "startend:end_checker",
    "startend:quotation",
)
MAX_ATTEMPTS = 50  # redraws of one plan before giving up (langdetect may misread a short all-capital text)

SENTENCES = (
    "This answer is about {topic}.",
    "Many people enjoy {topic} once they begin, and the first weeks teach the most.",
    "A clear plan makes the work easier to follow.",
    "Start small, keep notes, and look back at them every month.",
    "Friends and neighbours can share tools, time and advice.",
    "Mistakes are part of learning, so there is no need to worry about them.",
    "The cost depends on the choices you make along the way.",
    "Reading about {topic} from two or three sources gives a fuller picture.",
    "Most of the work happens in short sessions spread over many days.",
    "It helps to ask someone who has done it before.",
    "Local groups often meet once a week to talk about {topic}.",
    "Over time, the results become easier to see.",
)
TITLES = ("Notes on the Topic", "A Short Guide", "Where to Begin", "An Overview")
BULLETS = ("Set a goal", "Gather what you need", "Try it for a week", "Ask for feedback", "Review the results", "Share")
PLACEHOLDERS = ("[name]", "[date]", "[place]", "[phone]")
HIGHLIGHTS = ("*first step*", "*main idea*", "*next step*", "*key point*")
CASES = ("lower", "upper", "mixed")


@dataclasses.dataclass
class Features:
    """What a response shows; `render` writes it. Counts are exact (bullets) or at least (the others)."""

    case: str = "mixed"
    quoted: bool = False
    title: bool = False
    postscript: str = ""  # the marker, "" for none
    end_phrase: str = ""
    commas: bool = True
    words: tuple[str, ...] = ()  # keywords and forbidden words the text contains
    bullets: int = 0
    placeholders: int = 0
    highlights: int = 0


def sample_constraints(rng: random.Random, k: int, topic: str, types: Sequence[str] = CONTROLLED_TYPES) -> list:
    """k constraints of different, pairwise non-conflicting ids from `types`, parameters as `build-instructions`
    draws them, never a keyword or forbidden word that the topic itself contains (the body names the topic)."""
    conflicts = conflicting_ids()
    chosen: list[str] = []
    while len(chosen) < k:
        allowed = [t for t in types if not any(t in conflicts.get(c, ()) or c == t for c in chosen)]
        if not allowed:
            raise ValueError(f"{k} constraints do not fit {list(types)} without a conflict")
        chosen.append(rng.choice(allowed))
    out = []
    for type_ in chosen:
        while True:
            params = PARAM_SAMPLERS[type_](rng)
            named = [*params.get("keywords", ()), *params.get("forbidden_words", ())]
            if not any(word in topic.lower() for word in named):
                break
        out.append(cons.Constraint.make(type_, **params))
    return out


def features_for(
    constraints: Sequence[cons.Constraint], verdicts: Sequence[bool], base: random.Random, rng: random.Random
) -> Features:
    """Features meeting constraint k exactly when verdicts[k]. Every feature no constraint fixes is drawn from
    `base`; how a constraint is violated (which other case, how many bullets) from `rng`."""
    f = Features(
        case=base.choice(CASES),
        quoted=base.random() < 0.3,
        title=base.random() < 0.3,
        postscript=base.choice(("", "", "P.S.", "P.P.S")),
        end_phrase=base.choice(("", "", *END_PHRASES)),
        commas=base.random() < 0.5,
        words=tuple(w for w in (*KEYWORDS, *FORBIDDEN) if base.random() < 0.05),
        bullets=base.choice((0, 0, 2, 3, 4)),
        placeholders=base.choice((0, 0, 1, 2)),
        highlights=base.choice((0, 0, 1, 2)),
    )
    for c, ok in zip(constraints, verdicts, strict=True):
        _apply(f, c.type, c.kwargs, ok, rng)
    return f


def _apply(f: Features, type_: str, kw: dict, ok: bool, rng: random.Random) -> None:
    if type_ == "change_case:english_lowercase":
        f.case = "lower" if ok else rng.choice(("upper", "mixed"))
    elif type_ == "change_case:english_capital":
        f.case = "upper" if ok else rng.choice(("lower", "mixed"))
    elif type_ == "startend:quotation":
        f.quoted = ok
    elif type_ == "detectable_format:title":
        f.title = ok
    elif type_ == "detectable_content:postscript":
        f.postscript = kw["postscript_marker"] if ok else ""
    elif type_ == "startend:end_checker":
        f.end_phrase = kw["end_phrase"] if ok else rng.choice(("", *(p for p in END_PHRASES if p != kw["end_phrase"])))
    elif type_ == "punctuation:no_comma":
        f.commas = not ok
    elif type_ in ("keywords:existence", "keywords:forbidden_words"):
        (word,) = kw.get("keywords") or kw["forbidden_words"]
        present = ok if type_ == "keywords:existence" else not ok
        f.words = tuple(w for w in f.words if w != word) + ((word,) if present else ())
    elif type_ == "detectable_format:number_bullet_lists":
        n = kw["num_bullets"]
        f.bullets = n if ok else rng.choice([m for m in range(0, 7) if m != n])
    elif type_ == "detectable_content:number_placeholders":
        n = kw["num_placeholders"]
        f.placeholders = rng.randint(n, min(n + 1, len(PLACEHOLDERS))) if ok else rng.randint(0, n - 1)
    elif type_ == "detectable_format:number_highlighted_sections":
        n = kw["num_highlights"]
        f.highlights = rng.randint(n, min(n + 1, len(HIGHLIGHTS))) if ok else rng.randint(0, n - 1)
    else:
        raise ValueError(f"the controlled generator does not control {type_!r} (it controls {CONTROLLED_TYPES})")


def render(f: Features, topic: str, base: random.Random) -> str:
    """The response text showing `f`: title, body, bullets, postscript, end phrase; then case, then quotes. The
    body's sentences and their order come from `base` (drawn before anything `f` changes)."""
    body = [s.format(topic=topic) for s in base.sample(SENTENCES, 3)]
    title = base.choice(TITLES)
    body += [f"Keep the word {word} in mind." for word in f.words]
    body += [f"Write {p} on the first page." for p in PLACEHOLDERS[: f.placeholders]]
    body += [f"The {h} matters most." for h in HIGHLIGHTS[: f.highlights]]
    text = " ".join(body)
    if f.commas and "," not in text:
        text += " In short, it is worth a try."
    if not f.commas:
        text = text.replace(",", "")
    lines = [f"<<{title}>>"] if f.title else []
    lines += [text, *(f"* {item}" for item in BULLETS[: f.bullets])]
    if f.postscript:
        lines.append(f"{f.postscript} Thank you for your time.")
    if f.end_phrase:
        lines.append(f.end_phrase)
    out = "\n".join(lines)
    out = out.lower() if f.case == "lower" else out.upper() if f.case == "upper" else out
    return f'"{out}"' if f.quoted else out


def controlled_response(
    constraints: Sequence[cons.Constraint], verdicts: Sequence[bool], topic: str, base_seed: int, rng: random.Random
) -> str:
    """A response whose checker verdicts on `constraints` are exactly `verdicts` (redrawn until they are).

    Responses to one instruction drawn with one `base_seed` share their body and every feature the instruction does
    not ask about, so they differ only where their verdicts do (minimal pairs, as edits of one answer would be):
    what tells a chosen response from a rejected one is then the constraints, not incidental text."""
    for attempt in range(MAX_ATTEMPTS):
        base = random.Random(f"{base_seed}/{attempt}")
        features = features_for(constraints, verdicts, base, rng)
        text = render(features, topic, base)
        if [cons.check(c, text) for c in constraints] == list(verdicts):
            return text
    raise RuntimeError(f"no response met verdicts {list(verdicts)} on {[c.type for c in constraints]}")
