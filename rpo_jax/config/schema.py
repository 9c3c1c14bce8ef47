"""Typed run configuration: one frozen dataclass per section, each validating its own values.

The defaults here are the only defaults (`configs/base.yaml` lists them, a test keeps the two equal). Model
field names follow HuggingFace's `config.json` so a Llama config maps 1:1. Reading YAML and `--set` overrides
is `rpo_jax.config.loading`'s job.
"""

from __future__ import annotations

import dataclasses
import math

from rpo_jax.config.data import DataConfig
from rpo_jax.config.lora import LoraConfig
from rpo_jax.config.rules import ConfigError, check_bounds, check_storage_path

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """HF `rope_parameters` (transformers v5): `default` or Llama-3.1 `llama3` frequency scaling."""

    rope_type: str = "default"
    rope_theta: float = 10000.0
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.rope_type not in ("default", "llama3"):
            raise ConfigError(f"model.rope_parameters.rope_type: unsupported {self.rope_type!r}")
        check_bounds("model.rope_parameters", self)
        if self.rope_type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError(
                f"model.rope_parameters.high_freq_factor ({self.high_freq_factor}) must be greater than "
                f"low_freq_factor ({self.low_freq_factor}): llama3 scaling divides by their difference"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Llama architecture (HF names) plus how to run it (dtypes, scan, remat)."""

    vocab_size: int = 32000
    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    rope_parameters: RopeConfig = RopeConfig()
    initializer_range: float = 0.02
    bos_token_id: int = 1
    eos_token_id: int = 2
    # Not HF fields: how the model is executed.
    param_dtype: str = "float32"
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention: str = "auto"
    mlp_chunk_size: int = 0

    def __post_init__(self):
        check_bounds("model", self)
        for name in ("bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(
                    f"model.{name}={getattr(self, name)} is not a token id of a {self.vocab_size}-token vocabulary"
                )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"model.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"model.num_key_value_heads ({self.num_key_value_heads})"
            )
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in ("float32", "bfloat16"):
                raise ConfigError(f"model.{name} must be float32 or bfloat16, got {getattr(self, name)!r}")
        if self.remat_policy not in REMAT_POLICY_NAMES:
            raise ConfigError(f"model.remat_policy must be one of {REMAT_POLICY_NAMES}, got {self.remat_policy!r}")
        if self.attention not in ATTENTION_NAMES:
            raise ConfigError(f"model.attention must be one of {ATTENTION_NAMES}, got {self.attention!r}")


# Names only (MaxText's): rpo_jax/model/remat.py maps them to jax.checkpoint policies (config stays free of JAX work).
REMAT_POLICY_NAMES = ("none", "minimal", "save_qkv_proj", "save_dot_except_mlp", "full", "minimal_offloaded")
# rpo_jax/model/attention.py implements them and resolves auto per backend.
ATTENTION_NAMES = ("auto", "xla", "blockwise", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh over (data, fsdp, tensor) within one slice; -1 takes all remaining devices (at most one axis).

    `dcn_data` > 1 adds data parallelism across that many TPU slices (multislice, over the data-center network):
    the mesh's data axis becomes dcn_data × data, while fsdp and tensor stay inside a slice
    (`rpo_jax.runtime.multislice`)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    dcn_data: int = 1
    max_replicated_fraction: float = 0.02

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        if sum(s == -1 for s in sizes) > 1:
            raise ConfigError("mesh: at most one of data/fsdp/tensor may be -1")
        if any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(f"mesh: axis sizes must be positive or -1, got {sizes}")
        check_bounds("mesh", self)


# The registered losses (`rpo_jax.objective.losses.LOSSES` implements exactly these) and those reading label_smoothing.
LOSS_TYPES = (
    "sigmoid",
    "rpo",
    "iopo",
    "iopo_no_input",
    "iopo_no_output",
    "ipo",
    "hinge",
    "robust",
    "sigmoid_norm",
    "simpo",
    "sft",
)
LABEL_SMOOTHING_LOSSES = ("sigmoid", "robust")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weighted list of registered losses (as TRL's loss_type/loss_weights) and their hyperparameters."""

    loss_type: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] = (1.0,)
    beta: float = 0.1
    label_smoothing: float = 0.0
    rpo_gamma: float = 0.05
    rpo_margin_mode: str = "inside"
    simpo_gamma: float = 0.5
    logits_chunk_size: int = 1024
    vocab_chunk_size: int = 0  # 0 = auto: chunk width from V and the positions per chunk (objective/logps.py)

    def __post_init__(self):
        if self.beta <= 0:
            raise ConfigError(f"loss.beta must be > 0, got {self.beta} (β = 0 leaves the loss stuck at ln 2)")
        check_bounds("loss", self)
        if not self.loss_type:
            raise ConfigError("loss.loss_type is empty")
        unknown = [name for name in self.loss_type if name not in LOSS_TYPES]
        if unknown:
            raise ConfigError(f"loss.loss_type: unknown loss {unknown[0]!r}; known: {', '.join(LOSS_TYPES)}")
        if len(self.loss_type) != len(self.loss_weights):
            raise ConfigError(
                f"loss.loss_weights has {len(self.loss_weights)} entries for {len(self.loss_type)} loss_type"
            )
        if self.label_smoothing > 0 and not set(self.loss_type) & set(LABEL_SMOOTHING_LOSSES):
            raise ConfigError(
                f"loss.label_smoothing={self.label_smoothing} is read only by "
                f"{LABEL_SMOOTHING_LOSSES}, none of which is in loss.loss_type {list(self.loss_type)}"
            )
        if self.rpo_margin_mode not in ("inside", "outside"):
            raise ConfigError(f"loss.rpo_margin_mode must be inside or outside, got {self.rpo_margin_mode!r}")
        weights = self.loss_weights
        if any(not w >= 0 or math.isinf(w) for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"loss.loss_weights must be finite, >= 0 and not all 0, got {list(weights)}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup + decay schedule and global-norm clipping."""

    learning_rate: float = 5e-6
    schedule: str = "cosine"
    warmup_ratio: float = 0.1
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    moments_dtype: str = "float32"

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"optim.schedule must be cosine, linear or constant, got {self.schedule!r}")
        if self.moments_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"optim.moments_dtype must be float32 or bfloat16, got {self.moments_dtype!r}")
        check_bounds("optim", self)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings: steps, accumulation, reference mode, logging and evaluation cadence."""

    steps: int = 100
    grad_accum_steps: int = 1
    reference_mode: str = "separate"
    seed: int = 0
    output_dir: str = "runs/default"
    init_checkpoint: str = ""
    log_every: int = 1
    eval_every: int = 0
    max_consecutive_nonfinite: int = 5
    # Where metrics go besides metrics.jsonl, on process 0 (rpo_jax/train/trackers.py): any of TRACKER_NAMES.
    trackers: tuple[str, ...] = ()
    tracker_project: str = "rpo-jax"  # the wandb / trackio project the run is logged to
    compilation_cache_dir: str = "{output_dir}/jax_compilation_cache"  # runtime.compilation_cache; "" = off

    def __post_init__(self):
        for name in ("output_dir", "init_checkpoint", "compilation_cache_dir"):
            check_storage_path(getattr(self, name), f"train.{name}")
        if self.reference_mode not in ("separate", "lora_base", "precomputed", "none"):
            raise ConfigError(
                f"train.reference_mode must be separate, lora_base, precomputed or none, got {self.reference_mode!r}"
            )
        check_bounds("train", self)
        unknown = [t for t in self.trackers if t not in TRACKER_NAMES]
        if unknown or len(set(self.trackers)) != len(self.trackers):
            raise ConfigError(
                f"train.trackers: {list(self.trackers)} must name each of {', '.join(TRACKER_NAMES)} at most once"
            )
        if self.trackers and not self.tracker_project.strip():
            raise ConfigError("train.tracker_project is empty (the wandb / trackio project name)")


# Names only: rpo_jax/train/trackers.py implements them (each an optional extra of the same name).
TRACKER_NAMES = ("tensorboard", "wandb", "trackio")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax step checkpoints."""

    save_every: int = 50
    # Also save once this many minutes have passed since the last save (process 0's clock, agreed by every
    # process through the stop vote); 0 = by steps only. Bounds what a VM lost without notice costs.
    save_every_minutes: float = 0.0
    keep_last: int = 3
    async_save: bool = True

    def __post_init__(self):
        check_bounds("checkpoint", self)


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    mesh: MeshConfig = MeshConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
