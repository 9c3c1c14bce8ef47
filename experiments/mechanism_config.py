"""Settings of the mechanism experiment (`configs/experiment/mechanism_*.yaml`, `design: mechanism`).

The experiment trains a small model from scratch on pairs whose responses come from the controlled generator
(`data_pipeline/pairs/controlled.py`), so that every difference between arms is the pair construction and nothing
else: RPO, DPO best-vs-worst, DPO on RPO's own response pairs under the original instruction, IOPO, and RPO with
its prompts shuffled among pairs (a control that can only learn what responses alone say). See
`experiments/mechanism_runner.py` for the stages; the CPU-sized preset is `configs/experiment/mechanism_cpu.yaml`
(results: docs/experiments.md, "The mechanism, controlled").
"""

from __future__ import annotations

import dataclasses

from data_pipeline.pairs.controlled import CONTROLLED_TYPES
from data_pipeline.pairs.controlled_sets import SplitSettings
from rpo_jax.config.rules import ConfigError, check_local_path

# arm -> (training pairs it reads, loss_type). The pairs are built by `experiments.mechanism_data`.
ARMS = {
    "rpo": ("rpo", "rpo"),
    "dpo_best_worst": ("dpo_best_worst", "sigmoid"),
    "dpo_same_pairs": ("dpo_same_pairs", "sigmoid"),
    "iopo": ("iopo", "iopo"),
    "rpo_shuffled": ("rpo_shuffled", "rpo"),
}
DESIGN = "mechanism"


@dataclasses.dataclass(frozen=True)
class MechanismData:
    """Instructions with K in [min_k, max_k] constraints of the controlled types (training and held-out alike);
    `train_responses` responses per training instruction, `heldout_responses` per held-out one (one of them fully
    compliant: the best-of-N set). Held-out instructions are split in two: `validation` chooses the learning rates,
    `test` is reported. `noise_rates`: the share of training instructions whose DPO best-vs-worst pair is noisy,
    one training set (and one model per arm and seed) per rate."""

    train_instructions: int = 600
    validation_instructions: int = 100
    test_instructions: int = 240
    min_k: int = 1
    max_k: int = 6
    train_responses: int = 4
    heldout_responses: int = 4
    noise_rates: tuple[float, ...] = (0.0, 1.0)
    seed: int = 0
    types: tuple[str, ...] = CONTROLLED_TYPES  # the constraint ids instructions draw from

    def split(self, name: str, label: str, count: int, responses: int, noise_rate: float = 0.0) -> SplitSettings:
        return SplitSettings(name, label, count, self.min_k, self.max_k, responses, noise_rate, tuple(self.types))

    def __post_init__(self):
        if not 1 <= self.min_k <= self.max_k <= 6:
            raise ConfigError("data: constraints per instruction must satisfy 1 <= min_k <= max_k <= 6")
        if self.train_responses < 2 or self.heldout_responses < 2:
            raise ConfigError("data.train_responses and data.heldout_responses must be >= 2")
        unknown = sorted(set(self.types) - set(CONTROLLED_TYPES))
        if unknown or len(set(self.types)) < self.max_k:
            raise ConfigError(
                f"data.types: need max_k={self.max_k} distinct ids of {list(CONTROLLED_TYPES)}; unknown {unknown}"
            )
        if not self.noise_rates or any(not 0.0 <= r <= 1.0 for r in self.noise_rates):
            raise ConfigError(f"data.noise_rates must be shares in [0, 1], got {list(self.noise_rates)}")
        for name in ("train_instructions", "validation_instructions", "test_instructions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1")


@dataclasses.dataclass(frozen=True)
class MechanismTrain:
    """One model per arm, noise rate, seed; `learning_rates` are candidates, chosen per arm on the validation
    instructions at the first noise rate and the first seed, then used for every run of that arm. `seeds` set the
    random initial weights (the reference is the initial model) and the data order. `overrides` apply to every
    run (run-config `section.key=value`), `arm_overrides` (`ARM:section.key=value`) to one arm."""

    run_config: str = "configs/run/tiny_rpo.yaml"
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 100
    learning_rates: tuple[float, ...] = (1.0e-3,)
    overrides: tuple[str, ...] = ()
    arm_overrides: tuple[str, ...] = ()

    def __post_init__(self):
        check_local_path(self.run_config, "train.run_config")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ConfigError(f"train.arms: unknown {unknown}; known {list(ARMS)}")
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"train.seeds must be distinct, got {list(self.seeds)}")
        if self.steps < 1:
            raise ConfigError(f"train.steps must be >= 1, got {self.steps}")
        if not self.learning_rates or any(rate <= 0 for rate in self.learning_rates):
            raise ConfigError(f"train.learning_rates must be positive, got {list(self.learning_rates)}")
        for entry in self.arm_overrides:
            arm, colon, override = entry.partition(":")
            if not colon or arm not in ARMS or "=" not in override:
                raise ConfigError(
                    f"train.arm_overrides: {entry!r} must read ARM:section.key=value, ARM in {list(ARMS)}"
                )

    def overrides_for(self, arm: str) -> list[str]:
        own = [o for name, _, o in (e.partition(":") for e in self.arm_overrides) if name == arm]
        return [*self.overrides, *own]


@dataclasses.dataclass(frozen=True)
class MechanismReport:
    bootstrap_replicates: int = 2000
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class MechanismConfig:
    design: str = DESIGN
    name: str = "mechanism"
    data: MechanismData = MechanismData()
    train: MechanismTrain = MechanismTrain()
    report: MechanismReport = MechanismReport()

    def __post_init__(self):
        if self.design != DESIGN:
            raise ConfigError(f"design: {self.design!r} is not {DESIGN!r}")
