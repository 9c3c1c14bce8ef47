#!/usr/bin/env bash
# Run `rpo-jax train` on one NVIDIA GPU of this machine.
#
#   launch/gpu_single.sh all    --config configs/run/rpo_llama3_2_1b_lora_gpu.yaml \
#                               --data data/rpo_pairs_llama3/train --eval-data data/rpo_pairs_llama3/eval
#   launch/gpu_single.sh resume --config configs/run/rpo_llama3_2_1b_lora_gpu.yaml   # after an interruption
#
# Every setting is an RPO_* environment variable with a default, and a flag overrides the variable.
# `--dry-run` prints each command as `+ cmd` and runs nothing. See launch/README.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$SCRIPT_DIR")"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$SCRIPT_DIR/common.sh"

PYTHON="${RPO_PYTHON:-python3.11}"               # interpreter the venv is made from (>= 3.11)
VENV="${RPO_VENV:-.venv}"
CONFIG="${RPO_CONFIG:-configs/run/rpo_llama3_2_1b_lora_gpu.yaml}"
OUTPUT_DIR="${RPO_OUTPUT_DIR:-}"                 # "" = runs/<config file name without .yaml>
DATA="${RPO_DATA:-}"                             # dir of tokenized shards -> data.train_path; "" = config's
EVAL_DATA="${RPO_EVAL_DATA:-}"                   # held-out shards -> data.eval_path; none = no evaluation
# Persistent XLA compilation cache (train.compilation_cache_dir, applied by the trainer): a resumed or repeated run loads its compiled
# steps instead of compiling them again. "" = no cache.
COMPILATION_CACHE="${RPO_COMPILATION_CACHE-__OUTPUT_DIR__/jax_compilation_cache}"
STEPS="${RPO_STEPS:-}"                           # "" = the config's train.steps
GPU="${RPO_GPU:-0}"                              # CUDA device index: the only GPU JAX will see
# JAX reserves GPU memory up front (PREALLOCATE=true) so XLA's allocator never fragments or competes with
# other libraries; the fraction is how much of the card it takes. 0.90 leaves room for cuDNN / cuBLAS
# workspaces and the CUDA context. Lower it (or PREALLOCATE=false, which allocates on demand and is slower
# and fragments) only when something else must share the GPU.
MEM_FRACTION="${RPO_MEM_FRACTION:-0.90}"
PREALLOCATE="${RPO_PREALLOCATE:-true}"
# XLA:GPU compiler flags (an unknown flag aborts start-up; tests/test_launch.py checks these against jaxlib):
#   --xla_gpu_enable_latency_hiding_scheduler=true  schedule asynchronous work (host<->device copies of the
#       offload_dots remat policy, collectives when more GPUs are added) so it overlaps with compute
#       instead of waiting for it.
# Other choices, add them when a profile shows the need:
#   --xla_gpu_enable_command_buffer=                 turn CUDA graphs off (saves memory, costs launch time)
#   --xla_gpu_memory_limit_slop_factor=95            let the scheduler plan with less memory headroom
#   --xla_gpu_enable_triton_gemm=false               use cuBLAS for every matmul (if a Triton GEMM misbehaves)
GPU_XLA_FLAGS="${RPO_XLA_FLAGS-"--xla_gpu_enable_latency_hiding_scheduler=true"}"
DRY_RUN="${RPO_DRY_RUN:-0}"
OVERRIDES=()

usage() {
  cat <<EOF
Usage: launch/gpu_single.sh COMMAND [flags]

Commands:
  setup    create the venv (if missing) and pip install -e ".[cuda]"
  train    run \`rpo-jax train\` in the foreground on one GPU
  resume   train with --resume (continues from the latest complete checkpoint in the output dir)
  all      setup + train

Flags (environment variable in brackets, then the default):
  --config PATH      [RPO_CONFIG] $CONFIG
  --output-dir DIR   [RPO_OUTPUT_DIR] runs/<config name>
  --data PATH        [RPO_DATA] tokenized shards directory -> data.train_path (default: the config's)
  --eval-data PATH   [RPO_EVAL_DATA] held-out shards -> data.eval_path (needed with --data); none = no eval
  --compilation-cache DIR  [RPO_COMPILATION_CACHE] <output-dir>/jax_compilation_cache ("" = none)
  --steps N          [RPO_STEPS] the config's train.steps
  --set KEY=VALUE    config override passed to rpo-jax train (repeatable)
  --gpu INDEX        [RPO_GPU] $GPU (sets CUDA_VISIBLE_DEVICES)
  --venv DIR         [RPO_VENV] $VENV
  --python EXE       [RPO_PYTHON] $PYTHON
  --dry-run          [RPO_DRY_RUN=1] print every command, run nothing
  -h, --help         this help
Also: RPO_MEM_FRACTION ($MEM_FRACTION), RPO_PREALLOCATE ($PREALLOCATE),
RPO_XLA_FLAGS ($GPU_XLA_FLAGS; appended to any XLA_FLAGS already set).
EOF
}

COMMAND=""
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --config) CONFIG="$(flag_value "$@")"; shift ;;
    --output-dir) OUTPUT_DIR="$(flag_value "$@")"; shift ;;
    --data) DATA="$(flag_value "$@")"; shift ;;
    --eval-data) EVAL_DATA="$(flag_value "$@")"; shift ;;
    --compilation-cache) COMPILATION_CACHE="$(flag_value "$@")"; shift ;;
    --steps) STEPS="$(flag_value "$@")"; shift ;;
    --set) OVERRIDES+=("$(flag_value "$@")"); shift ;;
    --gpu) GPU="$(flag_value "$@")"; shift ;;
    --venv) VENV="$(flag_value "$@")"; shift ;;
    --python) PYTHON="$(flag_value "$@")"; shift ;;
    -*) die "unknown flag: $1 (see --help)" ;;
    *)
      [[ -z "$COMMAND" ]] || die "only one command allowed, got '$COMMAND' and '$1'"
      COMMAND="$1" ;;
  esac
  shift
done
[[ -n "$COMMAND" ]] || { usage >&2; die "missing COMMAND"; }
[[ -z "$STEPS" || "$STEPS" =~ ^[0-9]+$ ]] || die "--steps must be a non-negative integer, got '$STEPS'"
[[ "$GPU" =~ ^[0-9]+$ ]] || die "--gpu must be one device index, got '$GPU'"
[[ "$PREALLOCATE" == true || "$PREALLOCATE" == false ]] || die "RPO_PREALLOCATE must be true or false"
[[ "$MEM_FRACTION" =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "RPO_MEM_FRACTION must be in (0, 1], got '$MEM_FRACTION'"
[[ -n "$OUTPUT_DIR" ]] || OUTPUT_DIR="runs/$(basename "$CONFIG" .yaml)"
[[ -z "$DATA" || -n "$EVAL_DATA" ]] || die "--data replaces data.train_path only: pass --eval-data too (held-out \
shards for the step-0 and every train.eval_every evaluation), or --eval-data none to evaluate nothing"
COMPILATION_CACHE="${COMPILATION_CACHE//__OUTPUT_DIR__/$OUTPUT_DIR}"

cmd_setup() {
  if [[ "$DRY_RUN" == 1 || ! -x "$VENV/bin/python" ]]; then
    run "$PYTHON" -m venv "$VENV"
  else
    note "reusing venv $VENV"
  fi
  run "$VENV/bin/python" -m pip install -e ".[cuda]"
}

cmd_train() {  # cmd_train [--resume]
  [[ "$DRY_RUN" == 1 || -x "$VENV/bin/rpo-jax" ]] || die "$VENV/bin/rpo-jax not found: run \`setup\` first"
  local train=("$VENV/bin/rpo-jax" train --config "$CONFIG" --output-dir "$OUTPUT_DIR")
  [[ -z "$STEPS" ]] || train+=(--steps "$STEPS")
  train+=("$@")
  [[ -z "$DATA" ]] || train+=(--set "data.train_path=$DATA")
  if [[ "$EVAL_DATA" == none ]]; then
    train+=(--set "data.eval_path=" --set "train.eval_every=0")
  elif [[ -n "$EVAL_DATA" ]]; then
    train+=(--set "data.eval_path=$EVAL_DATA")
  fi
  # The trainer applies it itself (rpo_jax/runtime/compilation_cache.py); "" turns it off.
  train+=(--set "train.compilation_cache_dir=$COMPILATION_CACHE")
  local override
  for override in "${OVERRIDES[@]}"; do train+=(--set "$override"); done
  local xla_flags="${XLA_FLAGS:+$XLA_FLAGS }$GPU_XLA_FLAGS"
  run env CUDA_VISIBLE_DEVICES="$GPU" XLA_PYTHON_CLIENT_PREALLOCATE="$PREALLOCATE" \
    XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION" XLA_FLAGS="$xla_flags" "${train[@]}"
}

note "gpu_single.sh $COMMAND: GPU $GPU; venv $VENV; config $CONFIG; output $OUTPUT_DIR; data ${DATA:-<config>}; \
eval ${EVAL_DATA:-<config>}; compilation cache ${COMPILATION_CACHE:-none}; steps ${STEPS:-<config>}; overrides: ${OVERRIDES[*]:-none}; dry run=$DRY_RUN"
note "attention: the config's model.attention (default auto: cuDNN flash attention on this GPU in bfloat16); \
rpo-jax train prints the implementation it chose when it starts"
# Relative paths (config, data, output, venv) are relative to the repository root, wherever this is started.
show cd "$REPO_ROOT"
cd "$REPO_ROOT"
case "$COMMAND" in
  setup) cmd_setup ;;
  train) cmd_train ;;
  resume) cmd_train --resume ;;
  all) cmd_setup; cmd_train ;;
  *) die "unknown command '$COMMAND' (see --help)" ;;
esac
