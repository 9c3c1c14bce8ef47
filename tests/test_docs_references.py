"""Every citation of the algorithm reference resolves, and the repository points nowhere outside itself.

A citation is `docs/algorithms.md` (inside docs/ also a relative Markdown link to `algorithms.md`) followed by
section references: `§N`, optionally with a quoted sub-part (`§1 "Truncation"`, `§5, "Checker version"`), which
must be a `###` heading of section N, or with steps (`§5 step 7`, `§5, steps 4-8`), which must be numbered items
of section N; several are joined by `and`, `/` or `,` (`§2 and §4`). A Markdown link to the document must lead
to it, and its `#anchor` must be the GitHub anchor of one of its headings.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "algorithms.md"
DOC_REL = "docs/algorithms.md"
# Paths into a checkout beside this repository: a fresh clone has none of them.
OUTSIDE_REFERENCES = ("../shared", "/work/shared", "shared/docs")
# This file names those paths and holds deliberately bad citations (the checker's own cases), so the scans skip it.
THIS_FILE = "tests/test_docs_references.py"

HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")
SECTION_HEADING = re.compile(r"^## (\d+)\. ")
NUMBERED_ITEM = re.compile(r"^(\d+)\. ")
DOC_NAME = re.compile(r"algorithms\.md")
MARKDOWN_LINK = re.compile(r"\[([^\]\n]*)\]\(([^)\s]*)\)")
SECTION_REF = re.compile(r'§(\d+)(?:,?\s+(?:"([^"\n]+)"|steps?\s+(\d+)(?:\s*[-–]\s*(\d+))?))?')
NEXT_REF = re.compile(r"\s*(?:/|,|and)\s*(?=§)")


@dataclass
class Section:
    subparts: set[str] = field(default_factory=set)
    steps: set[int] = field(default_factory=set)


@dataclass
class Document:
    sections: dict[int, Section]
    anchors: set[str]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def parse_document(text: str) -> Document:
    sections: dict[int, Section] = {}
    anchors: set[str] = set()
    current: Section | None = None
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence:
            continue
        heading = HEADING.match(line)
        if heading:
            anchor = base = github_anchor(heading.group(2))
            count = 0
            while anchor in anchors:  # GitHub numbers repeated headings: name, name-1, name-2, ...
                count += 1
                anchor = f"{base}-{count}"
            anchors.add(anchor)
            level = len(heading.group(1))
            if level <= 2:
                number = SECTION_HEADING.match(line)
                current = sections.setdefault(int(number.group(1)), Section()) if number else None
            elif level == 3 and current is not None:
                current.subparts.add(heading.group(2))
        elif current is not None and (item := NUMBERED_ITEM.match(line)):
            current.steps.add(int(item.group(1)))
    return Document(sections, anchors)


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def reference_problems(where: str, text: str, pos: int, doc: Document) -> list[str]:
    """Checks the `§N ...` references that start at `pos` (after optional spaces)."""
    problems = []
    pos = re.compile(r"\s*").match(text, pos).end()
    while ref := SECTION_REF.match(text, pos):
        number, subpart, first, last = ref.groups()
        section = doc.sections.get(int(number))
        if section is None:
            problems.append(f"{where}: §{number} is not a section of {DOC_REL} (sections: {sorted(doc.sections)})")
        else:
            if subpart is not None and subpart not in section.subparts:
                problems.append(f'{where}: §{number} has no sub-part "{subpart}" (has: {sorted(section.subparts)})')
            steps = range(int(first), int(last or first) + 1) if first else range(0)
            missing = [step for step in steps if step not in section.steps]
            if missing:
                problems.append(f"{where}: §{number} has no step {missing[0]} (steps: {sorted(section.steps)})")
        joined = NEXT_REF.match(text, ref.end())
        if not joined:
            break
        pos = joined.end()
    return problems


def citation_problems(rel: str, text: str, doc: Document) -> list[str]:
    """Every problem with the citations of the document in file `rel` (a path from the repository root)."""
    problems = []
    link_spans = []
    for link in MARKDOWN_LINK.finditer(text):
        target, _, anchor = link.group(2).partition("#")
        if not target.endswith("algorithms.md"):
            continue
        link_spans.append(link.span())
        where = f"{rel}:{line_of(text, link.start())}"
        if (REPO / rel).parent.joinpath(target).resolve() != DOC:
            problems.append(f"{where}: link target {link.group(2)!r} does not lead to {DOC_REL}")
        if anchor and anchor not in doc.anchors:
            problems.append(f"{where}: link target {link.group(2)!r}: {DOC_REL} has no heading with that anchor")
    for name in DOC_NAME.finditer(text):
        where = f"{rel}:{line_of(text, name.start())}"
        in_docs_link = rel.startswith("docs/") and any(a <= name.start() < b for a, b in link_spans)
        if text[max(0, name.start() - 5) : name.start()] != "docs/" and not in_docs_link:
            problems.append(f"{where}: cites algorithms.md; name it {DOC_REL} so a reader at the root finds it")
        problems += reference_problems(where, text, name.end(), doc)
    return problems


@pytest.fixture(scope="module")
def doc() -> Document:
    return parse_document(DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def text_files() -> dict[str, str]:
    """Tracked files, and new ones git does not ignore, that are UTF-8 text."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    files = {}
    for rel in sorted(set(listed.split("\0")) - {""}):
        path = REPO / rel
        if not path.is_file():  # deleted in the work tree, not yet in the index
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            files[rel] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return files


def test_the_document_has_sections_1_to_10(doc):
    assert set(range(1, 11)) <= set(doc.sections), sorted(doc.sections)


def test_every_citation_resolves(text_files, doc):
    assert DOC_REL in text_files, f"{DOC_REL} is neither tracked nor a new file"
    cited = [rel for rel, text in text_files.items() if DOC_NAME.search(text) and rel != DOC_REL]
    assert len(cited) >= 20, cited  # the scan sees the citing files (a broken file listing would pass vacuously)
    problems = [p for rel, text in text_files.items() if rel != THIS_FILE for p in citation_problems(rel, text, doc)]
    assert not problems, "\n".join(problems)


def test_the_documents_own_references_and_links_resolve(doc):
    text = DOC.read_text(encoding="utf-8")
    problems = [
        p
        for m in re.finditer("§", text)
        for p in reference_problems(f"{DOC_REL}:{line_of(text, m.start())}", text, m.start(), doc)
    ]
    problems += [
        f"{DOC_REL}:{line_of(text, link.start())}: no heading has the anchor #{link.group(1)}"
        for link in re.finditer(r"\]\(#([^)\s]+)\)", text)
        if link.group(1) not in doc.anchors
    ]
    assert not problems, "\n".join(problems)


def test_no_file_points_outside_the_repository(text_files):
    found = [
        f"{rel}:{line_of(text, text.index(ref))}: {ref}"
        for rel, text in text_files.items()
        if rel != THIS_FILE
        for ref in OUTSIDE_REFERENCES
        if ref in text
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "rel,text,expected",
    [
        ("rpo_jax/a.py", "see docs/algorithms.md §2 and §4", None),
        ("rpo_jax/a.py", 'see docs/algorithms.md §1, "Truncation" and §5 steps 4-8', None),
        ("docs/a.md", "[algorithms.md §7](algorithms.md#7-flops-and-mfu)", None),
        ("launch/README.md", "[docs/algorithms.md §3](../docs/algorithms.md#3-reference-modes)", None),
        ("rpo_jax/a.py", "see docs/algorithms.md §42", "§42 is not a section"),
        ("rpo_jax/a.py", "see docs/algorithms.md §2/§42", "§42 is not a section"),
        ("rpo_jax/a.py", 'see docs/algorithms.md §5 "Checker versions"', 'no sub-part "Checker versions"'),
        ("rpo_jax/a.py", "see docs/algorithms.md §5, steps 7-9", "has no step 9"),
        ("rpo_jax/a.py", "see algorithms.md §5", "name it docs/algorithms.md"),
        ("docs/a.md", "see algorithms.md §5", "name it docs/algorithms.md"),
        ("docs/a.md", "[§5](algorithms.md#5-rpo-pair-constructions)", "no heading with that anchor"),
        ("launch/README.md", "[§5](docs/algorithms.md#5-rpo-pair-construction)", "does not lead to"),
    ],
)
def test_a_bad_citation_is_reported(doc, rel, text, expected):
    problems = citation_problems(rel, text, doc)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems
