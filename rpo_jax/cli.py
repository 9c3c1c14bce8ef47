"""`rpo-jax` command line: one subcommand per module, imported only when that subcommand runs.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`. A `UserError` (bad config value,
flag, file or data row) is printed as one line and exits 2; `--debug` (anywhere on the line) shows its traceback
instead. `args.command_argv` holds the command's own arguments, for commands that re-run themselves.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from importlib.metadata import PackageNotFoundError, version

from data_pipeline.errors import UserError
from data_pipeline.storage import use_storage_emulator
from rpo_jax.runtime.host_memory import keep_large_buffers_mmapped
from rpo_jax.runtime.out_of_memory import out_of_memory

# name -> (module, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "build-pairs": ("data_pipeline.pairs.cli", "build RPO / IOPO / DPO preference pairs from raw data"),
    "build-instructions": ("data_pipeline.pairs.synthesis_cli", "synthesize multi-constraint instructions"),
    "tokenize": ("data_pipeline.records.cli", "tokenize pair JSONL into ArrayRecord shards with a manifest"),
    "train": ("rpo_jax.commands.train", "train a policy with RPO / DPO / IOPO from a YAML config"),
    "precompute-ref": ("rpo_jax.commands.precompute_ref", "compute a run's reference log-probs ahead of training"),
    "import-hf": ("rpo_jax.commands.import_hf", "convert a HuggingFace Llama folder into a params checkpoint"),
    "export-hf": ("rpo_jax.commands.export_hf", "export a params checkpoint as a HuggingFace Llama folder"),
    "import-gguf": ("rpo_jax.commands.import_gguf", "convert a GGUF Llama file into a params checkpoint"),
    "generate": ("rpo_jax.commands.generate", "sample responses with a KV-cache sampler"),
    "serve": ("rpo_jax.commands.serve", "OpenAI-compatible chat server on the KV-cache sampler (local LLM judge)"),
    "eval": ("rpo_jax.commands.evaluate", "IFEval / IFBench / any prompt file / held-out pair evaluation"),
    "plan": ("rpo_jax.commands.plan", "compile the train step on abstract shapes and report memory"),
    "doctor": ("rpo_jax.commands.doctor", "on a GPU/TPU: time a config's train step, check fused attention kernels"),
    "experiment": ("experiments.cli", "run the staged RPO-vs-DPO experiment (instructions -> ... -> report)"),
    "bench": ("benchmarks.bench", "measure step time, throughput, MFU and memory (optionally vs TRL)"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default, except where there is no value to show (None, or an empty string or
    collection) or the help already says it: those options' help says itself what happens without them
    ("default: ..."), once."""

    def _get_help_string(self, action: argparse.Action) -> str:
        empty = isinstance(action.default, (str, dict, list, tuple)) and not action.default
        says_default = "default" in (action.help or "").lower()
        if action.default is None or empty or action.default == argparse.SUPPRESS or says_default:
            return action.help or ""
        return super()._get_help_string(action)


# Commands whose time goes mostly to decoding keep glibc's dynamic mmap threshold: a decode step's matmuls allocate
# and free blocks of a few MiB per call, and with the threshold fixed each is a fresh mmap with its page faults
# (SmolLM2-135M, 64 prompts: 106 s with 48 s of system time against 78 s; see rpo_jax.runtime.host_memory).
DECODING_COMMANDS = frozenset({"generate", "serve", "eval", "experiment"})


def decodes(name: str, args: argparse.Namespace) -> bool:
    return name in DECODING_COMMANDS or (name == "bench" and "generate" in getattr(args, "compare", []))


def package_version() -> str:
    try:
        return version("rpo-jax")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def command_parser(name: str) -> tuple[types.ModuleType, argparse.ArgumentParser]:
    """The module of subcommand `name` and its own parser (what `rpo-jax NAME ...` parses its flags with)."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(
        prog=f"rpo-jax {name}", description=COMMANDS[name][1], formatter_class=HelpFormatter
    )
    module.add_arguments(parser)
    return module, parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = argparse.ArgumentParser(
        prog="rpo-jax",
        description="Preference optimization (RPO, IOPO, DPO) in JAX.",
        epilog="--debug (anywhere) shows the traceback of a user error.",
    )
    parser.add_argument("--version", action="version", version=f"rpo-jax {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv)  # --help / --version exit here
        parser.print_help()
        return 2
    name = argv[0]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}")
    module, cmd_parser = command_parser(name)
    args = cmd_parser.parse_args(argv[1:])
    args.command_argv = argv[1:]
    if not decodes(name, args):
        keep_large_buffers_mmapped()  # before any step allocates: see rpo_jax.runtime.host_memory
    use_storage_emulator()  # before any GCS client reads its settings (see data_pipeline.storage)
    try:
        return int(module.run(args) or 0)
    except UserError as err:
        if debug:
            raise
        print(f"rpo-jax {name}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        oom = out_of_memory(err)
        if oom is None or debug:
            raise
        print(f"rpo-jax {name}: error: {oom}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
