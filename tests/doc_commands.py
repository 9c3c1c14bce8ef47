"""The `rpo-jax ...` command lines of the Markdown docs, as a shell would read them (tests/test_documented_commands.py).

Fenced code blocks are read as one shell session per document: `\\` continues a line, `#` starts a comment, `;`
`&&` `||` `|` `&` separate commands, here-documents are skipped, `NAME=value` (or `export NAME=value`) defines a
variable that later `$NAME`, `${NAME}` and `${NAME:-default}` expand to (as `B="rpo-jax bench"` in
docs/benchmarks.md; an unset name with a default expands to the default, one without stays as written), leading
`NAME=value` words are environment settings and a path ending in `/rpo-jax` runs rpo-jax too; blocks in another
language than the shell's are skipped. Inline backticked spans count when they start with `rpo-jax` followed by a
subcommand or a flag; prose names (`rpo-jax`) and messages (`rpo-jax train: error: ...`) are not commands.
Placeholders are kept and marked: `<name>` becomes `«name»`, and `is_placeholder` recognises them, ALL-CAPS words
(`DIR`, `FILE.json`, `gs://BUCKET/...`), `/path/to/...`, `/mnt/shared/...` and unresolved `$VAR`s.
"""

from __future__ import annotations

import dataclasses
import re
import shlex

FENCE = re.compile(r"^\s*(?:```|~~~)\s*(\w*)")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
ANGLE = re.compile(r"<([A-Za-z_][\w.-]*)>")
VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
REDIRECTION = re.compile(r"^\d*[<>]")
PREFIX_WORDS = {"if", "then", "else", "elif", "do", "{", "!", "time", "nohup", "exec", "env", "export"}
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
SEPARATORS = {";", "&&", "||", "|", "&"}
ELISIONS = {"...", "…"}
# `/path/to/X` is anything the reader has; `/mnt/shared` the storage every TPU worker mounts (launch/README.md).
PLACEHOLDER_FOLDERS = ("/path/to/", "/mnt/shared/")
CAPS_WORD = re.compile(r"^[A-Z][A-Z0-9_]*(\.[a-z]+)*$")


@dataclasses.dataclass(frozen=True)
class DocCommand:
    """One command line of a document: `argv` follows `rpo-jax` (environment settings dropped)."""

    doc: str  # repository-relative path of the document
    line: int  # 1-based line where the command starts
    text: str  # the command as the shell would see it after joining lines and expanding variables
    argv: tuple[str, ...]
    inline: bool  # a backticked span of prose, not a code block

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}: `{self.text}`"


@dataclasses.dataclass(frozen=True)
class OtherCommand:
    """A code-block command that is not `rpo-jax` (python scripts, launchers): documents may rely on its outputs."""

    line: int
    argv: tuple[str, ...]


def is_placeholder(token: str) -> bool:
    """A value the reader replaces: `«name»`, a whole `$VAR`, a path in `PLACEHOLDER_FOLDERS`, or an ALL-CAPS word
    as one path segment (`DIR`, `FILE.json`, `gs://BUCKET/x`)."""
    if "«" in token or re.fullmatch(r"\$\{?\w+\}?", token) or token.startswith(PLACEHOLDER_FOLDERS):
        return True
    value = token.split("=", 1)[-1]
    return any(CAPS_WORD.match(part) for part in re.split(r"[/:]", value) if part)


def _words(text: str) -> list[str]:
    """Shell words of one logical line, separators as their own words, comments dropped."""
    lexer = shlex.shlex(ANGLE.sub(r"«\1»", text), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def _segments(words: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for word in words:
        if word in SEPARATORS:
            out.append([])
        else:
            out[-1].append(word)
    return [segment for segment in out if segment]


def _expand(text: str, variables: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        name, default = match.group(1) or match.group(3), match.group(2)
        return variables.get(name, match.group(0) if default is None else default)

    return VARIABLE.sub(value, text)


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Joins `\\`-continued lines and drops here-document bodies; each result keeps the number of its first line."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    heredoc_end = None
    for number, line in lines:
        if heredoc_end is not None:
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        if match := HEREDOC.search(line):
            heredoc_end = match.group(1)
        start, text = pending if pending else (number, "")
        text += line
        if line.rstrip().endswith("\\"):
            pending = (start, text.rstrip()[:-1] + " ")
        else:
            pending = None
            out.append((start, text))
    if pending:
        out.append(pending)
    return out


def chunks(markdown: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """The document in order as ("code", numbered lines of a fenced shell block) and ("prose", a paragraph's
    numbered lines); blocks in other languages are left out."""
    out: list[tuple[str, list[tuple[int, str]]]] = []
    inside, shell = False, False
    for number, line in enumerate(markdown.splitlines(), 1):
        if fence := FENCE.match(line):
            inside = not inside
            shell = inside and fence.group(1) in SHELL_LANGUAGES
            if shell:
                out.append(("code", []))
        elif shell:
            out[-1][1].append((number, line))
        elif not inside and line.strip():
            if not (out and out[-1][0] == "prose" and out[-1][1][-1][0] == number - 1):
                out.append(("prose", []))
            out[-1][1].append((number, line))
    return out


def command_words(words: list[str]) -> list[str]:
    """`words` without leading shell keywords and environment settings, cut at the first redirection."""
    while words and (words[0] in PREFIX_WORDS or ASSIGNMENT.match(words[0])):
        words = words[1:]
    cut = next((i for i, word in enumerate(words) if REDIRECTION.match(word)), len(words))
    return words[:cut]


def command_argv(words: list[str]) -> tuple[str, ...] | None:
    """The words after `rpo-jax` when `words` run it, else None."""
    words = command_words(words)
    if len(words) < 2 or not (words[0] == "rpo-jax" or words[0].endswith("/rpo-jax")):
        return None
    nxt = words[1]
    if nxt.endswith(":") or not (nxt.startswith("-") or re.fullmatch(r"[a-z][a-z-]*", nxt)):
        return None  # a message such as `rpo-jax train: error: ...`, not a command
    return tuple(words[1:])


def commands_in(text: str) -> list[list[str]]:
    """The commands (word lists) of one line of shell."""
    return _segments(_words(text))


def _code_commands(name: str, lines: list[tuple[int, str]], variables: dict[str, str]):
    for number, line in _logical_lines(lines):
        try:
            segments = commands_in(_expand(line, variables))
        except ValueError as err:  # e.g. an unbalanced quote: the shell would not run it either
            raise ValueError(f"{name}:{number}: cannot read {line.strip()!r} as shell ({err})") from None
        for segment in segments:
            settings = segment[1:] if segment[0] == "export" else segment
            if settings and all(ASSIGNMENT.match(word) for word in settings):
                variables.update(word.split("=", 1) for word in settings if "$(" not in word)
            elif (argv := command_argv(segment)) is not None:
                text = " ".join(shlex.quote(w) for w in ("rpo-jax", *argv))
                yield DocCommand(name, number, text, argv, inline=False)
            else:
                yield OtherCommand(number, tuple(command_words(segment)))


def _inline_commands(name: str, paragraph: list[tuple[int, str]], variables: dict[str, str]):
    """Backticked spans may wrap across the lines of a paragraph: each is mapped back to the line it starts on."""
    text = " ".join(part for _, part in paragraph)
    starts = [(len(" ".join(p for _, p in paragraph[:i])), n) for i, (n, _) in enumerate(paragraph)]
    for match in INLINE.finditer(text):
        if "rpo-jax" not in match.group(1):
            continue
        try:
            words = _words(_expand(" ".join(match.group(1).split()), variables))
        except ValueError:
            continue  # not shell: a message or a fragment of one
        if (argv := command_argv(words)) is not None:
            line_number = max(n for offset, n in starts if offset <= match.start())
            yield DocCommand(name, line_number, " ".join(words), argv, inline=True)


def collect(name: str, markdown: str) -> list[DocCommand | OtherCommand]:
    """Every command of the document `name` (its `rpo-jax` commands and the other code-block commands) in order;
    variables set in code blocks hold for the code and the prose after them."""
    variables: dict[str, str] = {}
    found: list[DocCommand | OtherCommand] = []
    for kind, lines in chunks(markdown):
        found += (_code_commands if kind == "code" else _inline_commands)(name, lines, variables)
    return found
