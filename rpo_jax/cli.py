"""`rpo-jax` command line: one subcommand per module, imported only when that subcommand runs.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). A module that does not exist yet makes its command say so and exit 2.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("rpo_jax.commands.train", "train a policy with RPO / DPO / IOPO from a YAML config"),
    "build-pairs": ("data_pipeline.build_pairs", "build RPO / IOPO / DPO preference pairs from raw data"),
    "tokenize": ("data_pipeline.tokenize_cli", "tokenize pair JSONL into ArrayRecord shards with a manifest"),
    "precompute-ref": ("rpo_jax.commands.precompute_ref", "attach reference log-probs to tokenized datasets"),
    "import-hf": ("rpo_jax.commands.import_hf", "convert a HuggingFace Llama folder into an Orbax checkpoint"),
    "export-hf": ("rpo_jax.commands.export_hf", "export an Orbax checkpoint as a HuggingFace Llama folder"),
    "import-gguf": ("rpo_jax.commands.import_gguf", "convert a GGUF Llama file into an Orbax checkpoint"),
    "generate": ("rpo_jax.commands.generate", "sample responses with a KV-cache sampler"),
    "eval": ("rpo_jax.commands.evaluate", "IFEval / IFBench / held-out pair evaluation"),
    "bench": ("benchmarks.bench", "measure step time, throughput, MFU and memory (optionally vs TRL)"),
    "plan": ("rpo_jax.commands.plan", "compile the train step on abstract shapes and report memory"),
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="rpo-jax", description="Preference optimization (RPO, IOPO, DPO) in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}")
    module = _load(COMMANDS[name][0])
    if module is None:
        print(f"rpo-jax {name}: not built yet in this version", file=sys.stderr)
        return 2
    cmd_parser = argparse.ArgumentParser(prog=f"rpo-jax {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
