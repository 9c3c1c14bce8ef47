"""Every `rpo-jax` command the docs show runs as written, or at least parses, so docs, configs and CLI cannot drift.

Each command of README.md, launch/README.md, data_pipeline/README.md and docs/*.md (collected by
`doc_commands.collect`; launcher lines are dry-run and the `rpo-jax` commands they print are checked the same way)
is parsed by the real CLI parser (`rpo_jax.cli.command_parser`): every flag exists, required flags are present,
choices and types hold (a placeholder stands for a valid value of its flag's type). Its `--config` loads with its
`--set` and `--mesh` applied (an unknown key fails). Every path it reads (flags, and for `train` the config's data,
tokenizer and checkpoint paths) is in the repository, written by an earlier command of the same document, or a
placeholder (`doc_commands.is_placeholder`). A command that is cheap here (pairs, tokens, instructions, the plan of
a small model) and reads nothing it cannot find is run, its paths moved into a temporary folder; the others get
their subcommand's `--help` run. A backticked span of prose naming at most one flag that is not a whole command is
a mention of it (`rpo-jax train --resume`): checked without the required flags; `...` in a command marks one elided
the same way. The README's `rpo-jax plan --config configs/run/tiny_rpo.yaml` and data_pipeline/README.md's pairs and
tokens are among those run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from doc_commands import DocCommand, OtherCommand, collect, command_argv, commands_in, is_placeholder

from data_pipeline.files import local_path_arg
from data_pipeline.storage import storage_path_arg
from rpo_jax.cli import COMMANDS, command_parser
from rpo_jax.cli import main as cli_main
from rpo_jax.config.loading import PATH_SETTINGS, config_from_args, load_config, read_yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "launch/README.md", "data_pipeline/README.md"] + sorted(
    p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")
)
OUTPUT_FLAGS = {"--output", "--output-dir", "--hf-output", "--per-prompt", "--judge-cache-dir", "--plot-dir"}
OTHER_OUTPUT_FLAGS = {"--local-dir", "--cache"}  # `hf download --local-dir D`, `scripts/fetch_smollm2.py --cache D`
CHEAP = {"build-pairs", "tokenize", "build-instructions", "plan"}
LAUNCHERS = {"launch/gpu_single.sh", "launch/tpu_pod.sh"}
READS_CONFIG_PATHS = {"train", "precompute-ref"}
# A command of these documents that must be run, not only parsed (the start of its text).
MUST_RUN = {
    "README.md": "rpo-jax plan --config configs/run/tiny_rpo.yaml",
    "data_pipeline/README.md": "rpo-jax tokenize",
}
PATH_ARGS = (local_path_arg, storage_path_arg)  # flags naming a path (storage_path_arg: or a gs:// URL)
ALTERNATIVES = re.compile(r"^\{([^{}]+,[^{}]+)\}$")


class Document:
    """What the commands of one document have written so far (`written` only by commands this test ran)."""

    def __init__(self, name: str, scratch: Path):
        self.name, self.scratch = name, scratch
        self.produced: set[str] = set()
        self.written: set[str] = set()
        self.problems: list[str] = []
        self.status: dict[str, str] = {}

    def made_by_earlier(self, path: str, ran_only: bool = False) -> bool:
        return any(path == p or path.startswith(p + "/") for p in (self.written if ran_only else self.produced))

    def real_path(self, path: str) -> str:
        """Where a command run here reads or writes `path`: the repository's file, else in the scratch folder."""
        return str(REPO / path) if (REPO / path).exists() else str(self.scratch / path.lstrip("/"))


def normal(path: str) -> str:
    """Repository-relative when inside it, without `./` or a trailing `/`."""
    if Path(path).is_absolute() and Path(path).is_relative_to(REPO):
        path = Path(path).relative_to(REPO).as_posix()
    return os.path.normpath(path) if "://" not in path else path


def exists_or_made(doc: Document, path: str, launched: bool) -> bool:
    if "://" in path or is_placeholder(path) or doc.made_by_earlier(path):
        return True
    if launched and path.startswith(("$HOME/", "~/")):
        return True  # a worker's own folder, filled by the launcher's setup
    return not Path(path).is_absolute() and (REPO / path).exists()


def option_values(parser: argparse.ArgumentParser, tokens: list[str]) -> list[tuple[int, str, argparse.Action, str]]:
    """(index of the value's word, flag, action, value as written) for every value-taking flag of `tokens`, written
    `--flag value` or `--flag=value`."""
    actions = parser._option_string_actions
    out = []
    for i, token in enumerate(tokens):
        flag, equals, inline_value = token.partition("=")
        action = actions.get(flag) if token.startswith("--") else None
        if action is None or action.nargs == 0:
            continue
        if equals:
            out.append((i, flag, action, inline_value))
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out.append((i + 1, flag, action, tokens[i + 1]))
    return out


def with_value(word: str, flag: str, value: str) -> str:
    """The word holding a flag's value (`--flag=value` or `value`) with `value` in its place."""
    return f"{flag}={value}" if word.startswith(f"{flag}=") else value


def stand_in(action: argparse.Action, value: str) -> str:
    """A placeholder replaced by a value its flag accepts, so that parsing checks everything else."""
    if not is_placeholder(value):
        return value
    if action.choices:
        return str(next(iter(action.choices)))
    return {int: "1", float: "1.0"}.get(action.type, value)


def variants(argv: tuple[str, ...]) -> list[list[str]]:
    """`[--flag V]` optional groups opened; one argv per combination of `{a,b,c}` alternatives."""
    words = [w.lstrip("[") if w.startswith("[-") else w for w in argv]
    words = [w[:-1] if w.endswith("]") and "=[" not in w else w for w in words]
    options = [m.group(1).split(",") if (m := ALTERNATIVES.match(w)) else [w] for w in words]
    return [list(choice) for choice in itertools.product(*options)]


def parse(sub: str, tokens: list[str], lenient: bool) -> tuple[argparse.Namespace | None, str]:
    """The real parser's result for `rpo-jax SUB TOKENS`, or its error. `lenient`: required flags may be absent and
    a trailing flag may be named without its value."""
    _, parser = command_parser(sub)
    tokens = list(tokens)
    for i, flag, action, value in option_values(parser, tokens):
        tokens[i] = with_value(tokens[i], flag, stand_in(action, value))
    if lenient:
        for action in parser._actions:
            action.required = False
        last = parser._option_string_actions.get(tokens[-1]) if tokens else None
        if last is not None and last.nargs is None:
            tokens = tokens[:-1]
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            return parser.parse_args(tokens), ""
    except SystemExit as stop:
        if stop.code == 0:  # `--help` (or `--version`): argparse printed it and accepted the line
            return argparse.Namespace(), ""
        return None, (err.getvalue().strip().splitlines() or ["(no message)"])[-1]


def load_run_config(sub: str, args: argparse.Namespace):
    if sub == "experiment":  # as `rpo-jax experiment` reads it: the mechanism design or the SmolLM2 experiment
        from experiments.config import ExperimentConfig
        from experiments.mechanism_config import DESIGN, MechanismConfig

        cls = MechanismConfig if read_yaml(Path(args.config)).get("design") == DESIGN else ExperimentConfig
        return load_config(args.config, args.overrides, cls)
    return config_from_args(args) if hasattr(args, "overrides") else load_config(args.config)


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = cli_main(argv)
        except SystemExit as stop:
            code = stop.code or 0
    return int(code), out.getvalue()


def check_command(doc: Document, command: DocCommand, runs: dict, launched: bool = False) -> None:
    """Parses, loads and path-checks one command, runs it when `runnable_here`, and records its status and outputs
    in `doc`. `launched`: printed by a launcher's dry run (its `$HOME/` paths are the workers' own folders)."""

    def problem(text: str) -> None:
        doc.problems.append(f"{command.where}: {text}")
        doc.status[command.where] = "problem"

    sub, rest = command.argv[0], list(command.argv[1:])
    if sub.startswith("-"):
        code, output = run_cli(list(command.argv))
        doc.status.setdefault(command.where, "run")
        return problem(f"exit {code}: {output[-300:]}") if code else None
    if sub not in COMMANDS:
        return problem(f"unknown subcommand {sub!r} (known: {', '.join(COMMANDS)})")
    elided = any(word in ("...", "…") for word in rest)
    rest = [word for word in rest if word not in ("...", "…")]
    every = variants(tuple(rest))
    # A span of prose naming one flag is a mention of it, unless it is a whole command as it stands.
    mention = command.inline and sum(w.startswith("--") for w in rest) <= 1 and not parse(sub, every[0], False)[0]
    for tokens in every:
        args, error = parse(sub, tokens, lenient=elided or mention)
        if args is None:
            return problem(f"does not parse: {error}")
    if mention or elided:
        doc.status.setdefault(command.where, "mention" if mention else "parsed")
        return None
    # A synopsis (`[--flag V]`, `{a,b}`) is checked in every form above, its paths and config in the first one.
    synopsis = len(every) > 1 or every[0] != rest
    tokens = every[0]
    args, _ = parse(sub, tokens, lenient=False)
    _, parser = command_parser(sub)
    cfg = None
    if getattr(args, "config", None) and not is_placeholder(args.config):
        try:
            cfg = load_run_config(sub, args)
        except Exception as err:  # the config must load as the command would load it
            return problem(f"--config {args.config}: {err}")
    reads, writes = [], []
    for _, flag, action, value in option_values(parser, tokens):
        untyped_path = action.type is None and "/" in value and "=" not in value
        if flag != "--config" and (action.type in PATH_ARGS or untyped_path) and "://" not in value:
            (writes if flag in OUTPUT_FLAGS else reads).append(normal(value))
    if sub in READS_CONFIG_PATHS and cfg is not None:
        settings = {f"{s}.{k}": getattr(getattr(cfg, s), k) for s, k in PATH_SETTINGS}
        written_by_the_run = ("train.output_dir", "train.compilation_cache_dir")
        reads += [normal(v) for k, v in settings.items() if v and k not in written_by_the_run]
        writes.append(normal(cfg.train.output_dir))
    missing = [path for path in reads if not exists_or_made(doc, path, launched)]
    if missing:
        problem(f"reads {missing}: not in the repository, not written by an earlier command here, not a placeholder")
    concrete = not (launched or synopsis or missing or any(is_placeholder(w) or "$" in w for w in tokens))
    if concrete and runnable_here(doc, sub, args, cfg, reads):
        argv = [sub, *tokens]
        for i, flag, action, value in option_values(parser, tokens):
            if action.type in PATH_ARGS:
                argv[i + 1] = with_value(argv[i + 1], flag, doc.real_path(normal(value)))
        if tuple(argv) not in runs:
            runs[tuple(argv)] = run_cli(argv)
        code, output = runs[tuple(argv)]
        if code:
            problem(f"exit {code} when run: {output[-500:]}")
        doc.written.update(writes)
        doc.status.setdefault(command.where, "run")
    else:
        if sub not in runs:
            runs[sub] = run_cli([sub, "--help"])
        if runs[sub][0]:
            problem(f"rpo-jax {sub} --help: exit {runs[sub][0]}")
        doc.status.setdefault(command.where, "parsed")
    doc.produced.update(writes)


def runnable_here(doc: Document, sub: str, args: argparse.Namespace, cfg, reads: list[str]) -> bool:
    """Cheap on 2 CPU cores with no network: data commands whose inputs are shipped or were written by a command run
    here (no LLM judge), and the plan of a model of width <= 256 on rows of <= 512 tokens."""
    if sub not in CHEAP or getattr(args, "judge_base_url", None):
        return False
    if not all((REPO / path).exists() or doc.made_by_earlier(path, ran_only=True) for path in reads):
        return False
    if sub == "plan":
        seq_len = args.seq_len or max(cfg.data.length_buckets, default=cfg.data.max_length)
        return cfg.model.hidden_size <= 256 and seq_len <= 512
    return True


def check_other(doc: Document, other: OtherCommand, runs: dict) -> None:
    """Outputs of non-rpo-jax commands (downloads, mkdir), and launcher lines: dry-run, then check what they print."""
    words = list(other.argv)
    if words and words[0] == "bash":
        words = words[1:]
    if words[:2] == ["mkdir", "-p"]:
        doc.produced.update(normal(w) for w in words[2:])
    for flag, value in zip(words, words[1:]):
        if flag in OTHER_OUTPUT_FLAGS:
            doc.produced.add(normal(value))
    if not words or words[0] not in LAUNCHERS:
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPO_")}
    result = subprocess.run(
        ["bash", words[0], *words[1:], "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    where = f"{doc.name}:{other.line}: `{' '.join(words)}`"
    if result.returncode:
        doc.problems.append(f"{where}: exit {result.returncode} on --dry-run: {result.stderr.strip()[-300:]}")
        return
    for printed in result.stdout.splitlines():
        if not printed.startswith("+ ") or "rpo-jax" not in printed:
            continue
        for segment in commands_in(printed[2:]):
            inner = [w.removeprefix("--command=") for w in segment if "bin/rpo-jax " in w]
            for found in [segment, *(s for w in inner for s in commands_in(w))]:
                if (argv := command_argv(found)) is not None:
                    text = f"rpo-jax {' '.join(argv)} (printed by {words[0]})"
                    check_command(doc, DocCommand(doc.name, other.line, text, argv, False), runs, launched=True)


@pytest.fixture(scope="module")
def runs() -> dict:
    """Commands already run (argv -> exit code and output), shared by every document."""
    return {}


def check_document(name: str, markdown: str, scratch: Path, runs: dict) -> Document:
    """Checks every command of the document in order; each ends with a status (run, parsed, mention, problem)."""
    doc = Document(name, scratch)
    for item in collect(name, markdown):
        if isinstance(item, DocCommand):
            check_command(doc, item, runs)
            assert item.where in doc.status, f"{item.where}: neither run nor parsed"
        else:
            check_other(doc, item, runs)
    return doc


@pytest.mark.parametrize("name", DOCS)
def test_documented_commands_run_or_parse(name, tmp_path, runs, monkeypatch):
    monkeypatch.chdir(REPO)  # the docs' commands run from the repository root
    doc = check_document(name, (REPO / name).read_text(encoding="utf-8"), tmp_path, runs)
    assert not doc.problems, "\n".join(doc.problems)
    if name in MUST_RUN:  # the runner really runs the docs' cheap commands
        ran = [where for where, status in doc.status.items() if status == "run" and f"`{MUST_RUN[name]}" in where]
        assert ran, f"{name}: no `{MUST_RUN[name]} ...` was run: {doc.status}"


BROKEN_DOC = """Prose: `rpo-jax frobnicate --fast` and `rpo-jax generate --checkpoint runs/x/hf --tokenizer runs/x/hf`.

```bash
B="rpo-jax build-pairs"   # a variable, as docs/benchmarks.md defines them
$B --recipe iopo --input data_pipeline/assets/trace/trace.json \\
  --output data/trace
rpo-jax tokenize --input data/trace/pairs.jsonl --tokenizer data_pipeline/assets/tokenizers/llama2-sp-32k \\
  --output data/trace_tokens --max-length 2048
rpo-jax tokenize --input data/never_written.jsonl --tokenizer <tokenizer_dir> --output data/t --max-length 64
rpo-jax train --config configs/run/tiny_rpo.yaml --set train.no_such_key=1
rpo-jax train --config configs/run/no_such_config.yaml
rpo-jax eval --suite ifevals
rpo-jax train --config configs/run/tiny_rpo.yaml --output-dir runs/x
```

Then `rpo-jax generate --checkpoint runs/x/hf --tokenizer runs/x/hf
--prompts data_pipeline/assets/ifeval/input_data.jsonl --output runs/x/samples.jsonl` samples from it, and
`rpo-jax train --resume` continues it.
"""


def test_the_check_finds_each_kind_of_broken_command(tmp_path, runs, monkeypatch):
    monkeypatch.chdir(REPO)
    doc = check_document("broken.md", BROKEN_DOC, tmp_path, runs)
    expected = [
        "broken.md:1: `rpo-jax frobnicate --fast`: unknown subcommand 'frobnicate'",
        "the following arguments are required: --prompts, --output",
        "reads ['data/never_written.jsonl']: not in the repository, not written by an earlier command here",
        "--config configs/run/tiny_rpo.yaml: unknown config key(s): train.no_such_key",
        "--config configs/run/no_such_config.yaml: config file not found",
        "argument --suite: invalid choice: 'ifevals'",
    ]
    assert len(doc.problems) == len(expected), "\n".join(doc.problems)
    for problem, part in zip(doc.problems, expected):
        assert part in problem, (part, problem)
    statuses = ["problem", "problem", "run", "run", "problem", "problem", "problem", "problem", "parsed", "parsed"]
    assert list(doc.status.values()) == [*statuses, "mention"], doc.status
    assert (tmp_path / "data/trace_tokens/manifest.json").is_file()  # the tokens of the pairs the doc built
    assert not (REPO / "data/trace").exists()


def recorded_backends() -> dict[str, str]:
    """backend -> one result file that records it, over every measurement committed under docs/."""
    found: dict[str, str] = {}

    def walk(node, path: Path, parent: str = "") -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                named = key in ("backend", "device_kind", "device") or (key == "platform" and parent != "machine")
                if named and isinstance(value, str):
                    found.setdefault(value.split(":")[0].lower(), path.relative_to(REPO).as_posix())
                walk(value, path, key)
        elif isinstance(node, list):
            for value in node:
                walk(value, path, parent)

    for path in sorted((REPO / "docs").rglob("*.json")):
        walk(json.loads(path.read_text()), path)
    return found


def test_launch_readme_opens_with_what_has_run_where():
    """launch/README.md says first on what hardware anything has run; the committed measurements keep it true (one
    recorded on a GPU or TPU fails this test until that paragraph says so)."""
    opening = (REPO / "launch/README.md").read_text(encoding="utf-8").split("\n\n")[1]
    assert opening.startswith("**What has run on which hardware:**"), opening
    assert "everything has run on CPU only" in opening and "No GPU or TPU run is recorded" in opening
    backends = recorded_backends()
    assert "cpu" in backends and set(backends) == {"cpu"}, backends
