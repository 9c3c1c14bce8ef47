"""Typed run configuration: one frozen dataclass per section, each validating its own values.

The defaults here are the only defaults (`configs/base.yaml` lists them, a test keeps the two equal). Model
field names follow HuggingFace's `config.json` so a Llama config maps 1:1. Reading YAML and `--set` overrides
is `rpo_jax.config.loading`'s job.
"""

from __future__ import annotations

import dataclasses
import math

from rpo_jax.config.rules import PACKING_CHOICES, ConfigError, check_bounds, check_local_path

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
class LoraConfig:
    """LoRA adapters; with `rank == 0` the full model is trained."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

    def __post_init__(self):
        allowed = {"q", "k", "v", "o", "gate", "up", "down"}
        bad = set(self.target_modules) - allowed
        if bad:
            raise ConfigError(f"lora.target_modules: unknown {sorted(bad)}; allowed {sorted(allowed)}")
        check_bounds("lora", self)
        if self.rank > 0 and not self.target_modules:
            raise ConfigError("lora.target_modules is empty but lora.rank > 0: no layer would get adapters")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh over (data, fsdp, tensor); -1 takes all remaining devices (at most one axis)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    max_replicated_fraction: float = 0.02

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        if sum(s == -1 for s in sizes) > 1:
            raise ConfigError("mesh: at most one of data/fsdp/tensor may be -1")
        if any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(f"mesh: axis sizes must be positive or -1, got {sizes}")
        check_bounds("mesh", self)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where tokenized pair shards live, how they are built from pair JSONL, and how batches are formed."""

    train_path: str = ""
    eval_path: str = ""
    # When set, `rpo-jax train` (re)builds train_path / eval_path from these pair files if missing or stale.
    pairs_path: str = ""
    eval_pairs_path: str = ""
    tokenizer_path: str = ""
    truncation: str = "drop"
    max_length: int = 1024
    global_batch_size: int = 8
    shuffle_seed: int = 0
    num_workers: int = 0
    length_buckets: tuple[int, ...] = ()
    group_mirrors: bool = False
    packing: str = "none"

    def __post_init__(self):
        for name in ("train_path", "eval_path", "pairs_path", "eval_pairs_path", "tokenizer_path"):
            check_local_path(getattr(self, name), f"data.{name}")
        if (self.pairs_path or self.eval_pairs_path) and not self.tokenizer_path:
            raise ConfigError("data.pairs_path / data.eval_pairs_path need data.tokenizer_path")
        for name, allowed in (("truncation", ("drop", "keep_start", "split")), ("packing", PACKING_CHOICES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"data.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        check_bounds("data", self)
        bad_buckets = [b for b in self.length_buckets if not 1 <= b <= self.max_length]
        if bad_buckets:
            raise ConfigError(
                f"data.length_buckets: {bad_buckets} not in [1, data.max_length={self.max_length}] (a bucket pads "
                "a batch to its length; rows are at most max_length tokens)"
            )


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
    tensorboard: bool = False

    def __post_init__(self):
        for name in ("output_dir", "init_checkpoint"):
            check_local_path(getattr(self, name), f"train.{name}")
        if self.reference_mode not in ("separate", "lora_base", "precomputed", "none"):
            raise ConfigError(
                f"train.reference_mode must be separate, lora_base, precomputed or none, got {self.reference_mode!r}"
            )
        check_bounds("train", self)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax step checkpoints."""

    save_every: int = 50
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
