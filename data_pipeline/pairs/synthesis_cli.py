"""`rpo-jax build-instructions`: synthesized multi-constraint instructions for self-sampling (see
`data_pipeline.pairs.synthesis`).

Writes into a new folder `--output`: `train_instructions.jsonl` (our instruction schema: the `--input` of
`build-pairs`), `train_prompts.jsonl` (`key`, `prompt`: the `--prompts` of `generate`), `heldout_ifeval.jsonl`
(IFEval format, for `eval --prompts`) and `stats.json` (settings, constraints per instruction, overlap check).
With `--turns N` > 1 or `--system-constraints M` > 0 the instructions are conversations: `train_prompts.jsonl` holds
conversation prompts (`key`, `system`, `user_turns`, answered turn by turn by `generate`), and the held-out ones
are written as `heldout_conversations.jsonl` (our schema), `heldout_prompts.jsonl` (for `generate`) and
`heldout_multiturn.jsonl` (for `eval --prompts`, judged at every turn) instead of `heldout_ifeval.jsonl`.
"""

from __future__ import annotations

import argparse
import sys

from data_pipeline.files import local_path_arg
from data_pipeline.pairs.synthesis import SynthesisSettings, write_instructions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arg = parser.add_argument
    arg("--output", required=True, type=local_path_arg, help="new folder for the instruction files")
    arg("--num-train", type=int, default=200, help="training instructions")
    arg("--num-heldout", type=int, default=60, help="held-out instructions (other templates and topics)")
    arg("--min-constraints", type=int, default=3, help="least constraints per training instruction")
    arg("--max-constraints", type=int, default=8, help="most constraints per training instruction")
    arg("--heldout-min-constraints", type=int, default=1, help="least constraints per held-out instruction")
    arg("--heldout-max-constraints", type=int, default=8, help="most constraints per held-out instruction")
    arg("--seed", type=int, default=0, help="seed of the task order, constraint draws and parameters")
    arg("--turns", type=int, default=1, help="user turns per instruction; its constraints are spread over them")
    arg(
        "--system-constraints",
        type=int,
        default=0,
        help="constraints per instruction stated in a system prompt (0 = none: no system prompt)",
    )
    arg("--overwrite", action="store_true", help="replace an existing --output folder")


def run(args: argparse.Namespace) -> int:
    settings = SynthesisSettings(
        num_train=args.num_train,
        num_heldout=args.num_heldout,
        min_constraints=args.min_constraints,
        max_constraints=args.max_constraints,
        heldout_min_constraints=args.heldout_min_constraints,
        heldout_max_constraints=args.heldout_max_constraints,
        seed=args.seed,
        turns=args.turns,
        system_constraints=args.system_constraints,
    )
    stats = write_instructions(settings, args.output, overwrite=args.overwrite)
    print(
        f"build-instructions: {stats['instructions']['train']} train + {stats['instructions']['heldout']} "
        f"held-out instructions -> {args.output}",
        file=sys.stderr,
    )
    return 0
