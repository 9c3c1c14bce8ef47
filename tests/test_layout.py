"""The package layout as rules: which wing may import which, thin commands, module sizes.

data_pipeline's wings import downwards only (records -> pairs -> constraints, plus the base modules `files`,
`storage` and `errors`); nothing in data_pipeline imports rpo_jax, JAX, Flax or torch. rpo_jax is a folder of
wings whose arrows run one way (`WINGS`, the one table): config <- runtime <- model <- objective, io <- train <-
plan, generate; commands and `cli.py` may use any wing; the training library reads data only through
`data_pipeline.records`; commands parse flags and call the library, never another command.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASE = {"data_pipeline.files", "data_pipeline.errors", "data_pipeline.storage"}
# wing -> the other wings it may import (each wing may import itself and BASE). rpo_jax wings are named relative
# to the package; any other name is absolute.
WINGS: dict[str, tuple[str, ...]] = {
    "data_pipeline.constraints": (),
    "data_pipeline.pairs": ("data_pipeline.constraints",),
    "data_pipeline.records": ("data_pipeline.pairs",),
    "data_pipeline.scripts": ("data_pipeline",),
    "config": (),
    "runtime": ("config",),
    "model": ("runtime", "config"),
    "objective": ("model", "runtime", "config"),
    "io": ("model", "runtime", "config"),
    "train": ("objective", "io", "model", "runtime", "config", "data_pipeline.records"),
    "generate": ("model", "io", "runtime", "config"),
    "plan": ("train", "objective", "model", "runtime", "config"),
    "commands": ("rpo_jax", "data_pipeline"),
    "cli": ("rpo_jax", "data_pipeline"),
}
LIBRARY_WINGS = [w for w in WINGS if not w.startswith("data_pipeline") and w not in ("cli", "commands")]
ROOT_MODULES = {"rpo_jax", "rpo_jax.cli"}  # nothing else directly under rpo_jax/


def absolute(name: str) -> str:
    return name if name.split(".")[0] in ("data_pipeline", "rpo_jax") else f"rpo_jax.{name}"


ALLOWED = {absolute(wing): {absolute(wing), *map(absolute, others), *BASE} for wing, others in WINGS.items()}
MAX_MODULE_LINES = 300
MAX_COMMAND_LINES = 80


def modules(package: str) -> list[tuple[str, Path]]:
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        name = rel[:-3].replace("/", ".").removesuffix(".__init__")
        out.append((name, path))
    return out


def project_imports(name: str, path: Path) -> set[str]:
    """Absolute module names of the project's packages that `path` imports (at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in ("rpo_jax", "data_pipeline", "benchmarks", "scripts")}


def allowed_for(name: str) -> set[str]:
    owner = max(
        (prefix for prefix in ALLOWED if name == prefix or name.startswith(prefix + ".")), key=len, default=None
    )
    return ALLOWED[owner] if owner else {"data_pipeline"}  # data_pipeline.files/errors and the root package


@pytest.mark.parametrize("package", ["data_pipeline", "rpo_jax"])
def test_imports_point_down_the_layers(package):
    wrong = []
    for name, path in modules(package):
        allowed = allowed_for(name)
        for imported in sorted(project_imports(name, path)):
            if not any(imported == a or imported.startswith(a + ".") for a in allowed):
                wrong.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_every_rpo_jax_module_lives_in_a_wing():
    rpo_wings = {wing for wing in WINGS if not wing.startswith("data_pipeline")}
    loose = [
        str(path.relative_to(REPO))
        for name, path in modules("rpo_jax")
        if name not in ROOT_MODULES and name.split(".")[1] not in rpo_wings
    ]
    assert not loose, f"outside every wing of WINGS (move each into the wing whose job it is): {loose}"


@pytest.mark.parametrize(
    "wing", [w for w in WINGS if not w.startswith("data_pipeline") and w not in ("cli", "commands")]
)
def test_each_wing_docstring_says_what_it_may_import(wing):
    """The `May import:` line of each wing's docstring names exactly its row of WINGS."""
    doc = ast.get_docstring(ast.parse((REPO / "rpo_jax" / wing / "__init__.py").read_text())) or ""
    assert "May import:" in doc, f"rpo_jax/{wing}/__init__.py: the docstring has no 'May import:' line"
    named = set(re.findall(r"`([\w.]+)`", doc.split("May import:", 1)[1]))
    assert named & (set(WINGS) | {"data_pipeline.records"}) == set(WINGS[wing])


def test_no_command_imports_another_command_and_commands_are_thin():
    problems = []
    for name, path in modules("rpo_jax/commands"):
        lines = len(path.read_text().splitlines())
        if lines > MAX_COMMAND_LINES:
            problems.append(f"{path.relative_to(REPO)}: {lines} lines (commands parse flags and call the library)")
        problems += [
            f"{path.relative_to(REPO)} imports {m}"
            for m in project_imports(name, path)
            if m.startswith("rpo_jax.commands.")
        ]
    assert not problems, "\n".join(problems)


def test_modules_stay_readable():
    big = [
        f"{path.relative_to(REPO)}: {n} lines"
        for package in ("rpo_jax", "data_pipeline")
        for _, path in modules(package)
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not big, "\n".join(big)


def test_data_pipeline_imports_neither_jax_nor_rpo_jax_at_run_time():
    code = (
        "import importlib, pkgutil, sys\n"
        "import data_pipeline\n"
        "names = [m.name for m in pkgutil.walk_packages(data_pipeline.__path__, 'data_pipeline.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "import data_pipeline.constraints as c\n"
        "c.check(c.Constraint.make('length_constraints:number_sentences', num_sentences=1,"
        " relation='at least'), 'One. Two.')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'torch', 'rpo_jax'))\n"
        "assert 'data_pipeline.records.loader' in names, names\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_git_grep_finds_no_rpo_jax_in_data_pipeline():
    result = subprocess.run(
        ["git", "grep", "-n", "rpo_jax", "--", "data_pipeline/"], cwd=REPO, capture_output=True, text=True
    )
    assert result.stdout == "", result.stdout
