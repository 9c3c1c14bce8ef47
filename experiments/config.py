"""Typed settings of an experiment (`configs/experiment/*.yaml`), read like run configs (includes, `--set`).

Every section maps to one stage; changing a section reruns that stage and the stages after it (see `stages`).
Paths are read from the directory the command runs in.
"""

from __future__ import annotations

import dataclasses

from data_pipeline.pairs.synthesis import SynthesisSettings
from rpo_jax.config.rules import ConfigError, check_local_path

# method -> (pair set it trains on, loss_type). One model is trained per listed method, same settings otherwise.
METHODS = {
    "dpo": ("dpo", "sigmoid"),
    # DPO on exactly RPO's response pairs under the original instruction (equal scores dropped), from the same
    # samples: what RPO adds beyond its pairs is then its reversed prompts (experiments.mechanism_data does the same).
    "dpo_same_pairs": ("dpo_same_pairs", "sigmoid"),
    "rpo": ("rpo", "rpo"),
    "iopo": ("iopo", "iopo"),
    "iopo_no_input": ("iopo", "iopo_no_input"),
    "iopo_no_output": ("iopo", "iopo_no_output"),
}
SUITES = ("ifeval", "ifbench", "heldout")
SEEDED = ("train.seed=", "data.shuffle_seed=")  # set per run by train.seeds, never by an override


@dataclasses.dataclass(frozen=True)
class InstructionsSection(SynthesisSettings):
    """`rpo-jax build-instructions`' settings, and `num_validation` validation instructions synthesized like the
    held-out ones (held-out base tasks, K in the held-out range; drawn after them, so the held-out instructions are
    the same with or without them). The validation split is never reported: with several learning rates it is
    what each method's rate is chosen on (0: the rate is chosen on the reported held-out suite, and the report
    says so)."""

    num_validation: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.num_validation < 0:
            raise ConfigError(f"instructions.num_validation must be >= 0, got {self.num_validation}")

    def synthesis(self) -> SynthesisSettings:
        """The settings of the training and held-out instructions (the validation split is drawn after them)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(SynthesisSettings)}
        return SynthesisSettings(**fields)


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The base model: a GGUF file (converted once) or an HF Llama folder with tokenizer and chat template."""

    gguf: str = ""
    hf_dir: str = ""
    run_config: str = "configs/run/smollm2_lora.yaml"  # training settings shared by every method

    def __post_init__(self):
        for name in ("gguf", "hf_dir", "run_config"):
            check_local_path(getattr(self, name), f"model.{name}")


@dataclasses.dataclass(frozen=True)
class SamplingSection:
    """Self-sampling: `num_samples` responses per training instruction from the base model. `responses_file`
    (JSONL, or .jsonl.gz as committed with a run) reuses earlier samples instead: the training and evaluation
    then rerun without resampling."""

    responses_file: str = ""
    num_samples: int = 4
    temperature: float = 0.9
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self):
        check_local_path(self.responses_file, "sampling.responses_file")
        if self.num_samples < 2:
            raise ConfigError("sampling.num_samples must be >= 2 (pairs need two responses to one instruction)")
        if not 0.0 < self.temperature <= 2.0:
            raise ConfigError(f"sampling.temperature must be in (0, 2], got {self.temperature}")


@dataclasses.dataclass(frozen=True)
class PairsSection:
    """RPO and IOPO keep pairs with g >= min_g (the paper: 3); the DPO baseline pairs best vs worst."""

    min_g: int = 3
    dpo_min_g: int = 1
    eval_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.min_g < 1 or self.dpo_min_g < 1:
            raise ConfigError("pairs.min_g and pairs.dpo_min_g must be >= 1")


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """One model per method and candidate learning rate; `steps` and `overrides` (run-config `section.key=value`)
    apply to all of them. With several rates, each method keeps the one with the best prompt-level accuracy on the
    validation instructions (`instructions.num_validation`; without them, on the held-out suite, which is reported).

    `seeds`: each method is trained once per seed (the run's `train.seed` and `data.shuffle_seed`). The rate is
    chosen on the first seed's models; the other seeds train the chosen rate only. Seed 0's stages keep the names
    (and keys) of a single-seed experiment, so adding seeds reuses what one seed trained.

    `method_overrides` (`METHOD:section.key=value`) apply to one method only, after `overrides`. They are meant for
    settings that change how a step is computed, not what it computes: IOPO scores 4 sequences per example where
    DPO and RPO score 2, so `iopo:train.grad_accum_steps=2` gives it the same rows per micro-batch (the same
    memory) and the same effective batch, and leaves the other methods' trained models cached."""

    methods: tuple[str, ...] = ("dpo", "rpo", "iopo")
    steps: int = 40
    learning_rates: tuple[float, ...] = (1.0e-4,)
    overrides: tuple[str, ...] = ()
    method_overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigError(f"train.seeds must be distinct seeds >= 0, at least one, got {list(self.seeds)}")
        for entry in (*self.overrides, *(e.partition(":")[2] for e in self.method_overrides)):
            if entry.startswith(SEEDED):
                raise ConfigError(f"train.overrides: {entry!r}: train.seed and data.shuffle_seed come from train.seeds")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"train.methods: unknown {unknown}; known {sorted(METHODS)}")
        if self.steps < 1:
            raise ConfigError(f"train.steps must be >= 1, got {self.steps}")
        if not self.learning_rates or any(rate <= 0 for rate in self.learning_rates):
            raise ConfigError(f"train.learning_rates must be positive rates, got {list(self.learning_rates)}")
        for entry in self.method_overrides:
            method, colon, override = entry.partition(":")
            if not colon or method not in METHODS or "=" not in override:
                raise ConfigError(
                    f"train.method_overrides: {entry!r} must read METHOD:section.key=value with METHOD one of "
                    f"{sorted(METHODS)}"
                )

    def overrides_for(self, method: str) -> list[str]:
        """The run-config overrides of one method: the shared ones, then its own."""
        own = [override for name, _, override in (e.partition(":") for e in self.method_overrides) if name == method]
        return [*self.overrides, *own]


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Greedy decoding on each suite: IFEval (541 prompts), IFBench (ids the checkers support), held-out."""

    suites: tuple[str, ...] = SUITES
    max_new_tokens: int = 256
    batch_size: int = 32
    limit: int = 0  # first N prompts of each suite, 0 = all (a smoke test; results then say so)

    def __post_init__(self):
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown or not self.suites:
            raise ConfigError(f"eval.suites: unknown {unknown}; known {list(SUITES)}")


@dataclasses.dataclass(frozen=True)
class MultiturnSection:
    """The held-out multi-turn suite (`experiments.multiturn`): `conversations` conversations of `turns` user turns
    on held-out base tasks, each with K constraints (uniform in [min_constraints, max_constraints]), the first
    `system_constraints` (at most K - 1) stated in a system prompt and the rest added over the turns (Multi-IF's
    cumulative checks).
    Every model answers them greedily turn by turn, each answer in the context of the next turn (`eval`'s token
    budget), scored at every turn. 0 conversations: no suite."""

    conversations: int = 24
    turns: int = 3
    system_constraints: int = 1
    min_constraints: int = 2
    max_constraints: int = 6
    seed: int = 0

    def __post_init__(self):
        if self.conversations < 0 or self.turns < 1:
            raise ConfigError("multiturn.conversations must be >= 0 and multiturn.turns >= 1")
        if self.system_constraints < 0 or not 1 <= self.min_constraints <= self.max_constraints:
            raise ConfigError(
                "multiturn: need system_constraints >= 0 and 1 <= min_constraints <= max_constraints, got "
                f"{self.system_constraints}, {self.min_constraints}, {self.max_constraints}"
            )

    def synthesis(self) -> SynthesisSettings:
        """The held-out conversations as `rpo-jax build-instructions` makes them (no training split)."""
        low, high = self.min_constraints, self.max_constraints
        return SynthesisSettings(
            num_train=0,
            num_heldout=self.conversations,
            min_constraints=low,
            max_constraints=high,
            heldout_min_constraints=low,
            heldout_max_constraints=high,
            seed=self.seed,
            turns=self.turns,
            system_constraints=self.system_constraints,
        )


@dataclasses.dataclass(frozen=True)
class ReportSection:
    bootstrap_replicates: int = 2000
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    model: ModelSection = ModelSection()
    instructions: InstructionsSection = InstructionsSection()
    sampling: SamplingSection = SamplingSection()
    pairs: PairsSection = PairsSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    multiturn: MultiturnSection = MultiturnSection()
    report: ReportSection = ReportSection()

    def __post_init__(self):
        if bool(self.model.gguf) == bool(self.model.hf_dir):
            raise ConfigError("model: set exactly one of model.gguf and model.hf_dir (the base model)")
        if self.instructions.conversational:
            raise ConfigError(
                "instructions.turns and instructions.system_constraints must stay 1 and 0: the experiment trains "
                "on single-turn instructions and evaluates conversations in its multiturn suite (section multiturn)"
            )
        if self.instructions.num_validation and len(self.train.learning_rates) < 2:
            raise ConfigError(
                "instructions.num_validation: the validation split only chooses between train.learning_rates; "
                "list several rates or set it to 0"
            )

    @property
    def selection_suite(self) -> str:
        """Where the learning rate is chosen: the unreported validation split, or the reported held-out suite."""
        return "validation" if self.instructions.num_validation else "heldout"
