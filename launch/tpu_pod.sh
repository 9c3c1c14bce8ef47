#!/usr/bin/env bash
# Run `rpo-jax train` on every worker of a Cloud TPU VM slice (v4 / v5e / v5p / v6e).
#
#   launch/tpu_pod.sh all    --name rpo-8b --zone us-east5-a --accelerator-type v5p-8 \
#                            --config configs/run/rpo_llama3_1_8b_v5p8.yaml \
#                            --output-dir gs://YOUR_BUCKET/runs/rpo_llama3_1_8b_v5p8 \
#                            --data gs://YOUR_BUCKET/rpo_pairs_llama3/train \
#                            --eval-data gs://YOUR_BUCKET/rpo_pairs_llama3/eval
#   launch/tpu_pod.sh resume --name rpo-8b ... (same flags)   # after a spot preemption
#   launch/tpu_pod.sh all --num-slices 2 ...   # multislice: 2 slices through queued resources, data parallel across
#
# Every setting is an RPO_* environment variable with a default, and a flag overrides the variable.
# `--dry-run` prints each command as `+ cmd` and runs nothing. See launch/README.md.
# --output-dir (and train.init_checkpoint) must be the same for every worker and outlive the slice: a gs:// bucket
# (the default; the trainer writes it directly) or an absolute path on a share every worker mounts (Filestore/NFS).
# Training data is copied to (or mounted on) every worker; a config that tokenizes pairs on first use tokenizes
# them on every host (bucket) or once into <output-dir>/data (shared filesystem). See launch/README.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$SCRIPT_DIR")"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$SCRIPT_DIR/common.sh"

TPU_NAME="${RPO_TPU_NAME:-rpo-jax}"
ZONE="${RPO_ZONE:-us-east5-a}"
PROJECT="${RPO_PROJECT:-}"                       # "" = gcloud's configured project
ACCELERATOR_TYPE="${RPO_ACCELERATOR_TYPE:-v5p-8}"
# TPU VM image; it must match the generation: v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite,
# v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e.
RUNTIME_VERSION="${RPO_RUNTIME_VERSION:-v2-alpha-tpuv5}"
SPOT="${RPO_SPOT:-0}"                            # 1 = spot capacity (cheap, can be preempted any time)
QUEUED="${RPO_QUEUED:-0}"                        # 1 = request through queued resources and wait for it
NUM_SLICES="${RPO_NUM_SLICES:-1}"                # > 1 = multislice: that many slices (queued resources), mesh.dcn_data
POLL_SECONDS="${RPO_POLL_SECONDS:-60}"           # how often a queued resource's state is read while waiting on it
CONFIG="${RPO_CONFIG:-configs/run/rpo_llama3_1_8b_v5p8.yaml}"   # relative to the repository root
OUTPUT_DIR="${RPO_OUTPUT_DIR:-}"                 # required for train: gs://bucket/dir, or absolute on a share
DATA="${RPO_DATA:-}"                             # tokenized shards: gs://bucket/dir or a local dir; "" = config's
EVAL_DATA="${RPO_EVAL_DATA:-}"                   # held-out shards, the same way -> data.eval_path; none = no eval
DATA_MODE="${RPO_DATA_MODE:-copy}"               # copy (gsutil rsync to local disk) | gcsfuse (mount)
# Persistent XLA compilation cache (train.compilation_cache_dir, applied by the trainer): a resumed or repeated run
# loads its compiled steps instead of compiling them again. In --output-dir, so it outlives a preempted slice.
COMPILATION_CACHE="${RPO_COMPILATION_CACHE-__OUTPUT_DIR__/jax_compilation_cache}"   # "" = no cache
STEPS="${RPO_STEPS:-}"                           # "" = the config's train.steps
GIT_URL="${RPO_GIT_URL:-}"                       # "" = ship `git archive HEAD` of this checkout
GIT_REF="${RPO_GIT_REF:-main}"                   # branch or tag cloned when GIT_URL is set
REMOTE_PYTHON="${RPO_REMOTE_PYTHON:-3.11}"       # TPU VM images ship 3.10; uv fetches this version
REMOTE_DIR="${RPO_REMOTE_DIR:-rpo-jax}"          # all REMOTE_* paths are relative to the worker's $HOME
REMOTE_VENV="${RPO_REMOTE_VENV:-rpo-jax-venv}"
REMOTE_DATA_DIR="${RPO_REMOTE_DATA_DIR:-rpo-jax-data}"
REMOTE_EVAL_DATA_DIR="${RPO_REMOTE_EVAL_DATA_DIR:-rpo-jax-eval-data}"
REMOTE_LOG_DIR="${RPO_REMOTE_LOG_DIR:-rpo-jax-logs}"
WORKER="${RPO_WORKER:-all}"                      # which workers `logs` reads: all | 0 | 1,3
LOG_LINES="${RPO_LOG_LINES:-40}"
TPU_STDERR_LOG_LEVEL="${TPU_STDERR_LOG_LEVEL:-2}"  # libtpu log to stderr: 0 INFO, 1 WARNING, 2 ERROR
TPU_MIN_LOG_LEVEL="${TPU_MIN_LOG_LEVEL:-0}"        # libtpu log file (/tmp/tpu_logs) threshold, same scale
# XLA:TPU compiler flags, read by libtpu when JAX starts. An unknown flag aborts start-up, so keep this
# list to flags the installed libtpu knows (override with RPO_LIBTPU_INIT_ARGS="" to use none).
# Default: overlap FSDP's parameter all-gathers and gradient reduce-scatters with compute.
#   --xla_tpu_enable_async_collective_fusion=true         run collectives asynchronously, fused with compute
#   --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true   ... including all-gathers (FSDP weights)
#   --xla_tpu_enable_async_collective_fusion_multiple_steps=true    ... spread over several layers' compute
#   --xla_tpu_overlap_compute_collective_tc=true           overlap on the TensorCore
#   --xla_enable_async_all_gather=true                     async all-gather (XLA-level)
# Other choices, add them when a profile shows the need:
#   --xla_tpu_enable_data_parallel_all_reduce_opt=true --xla_tpu_data_parallel_opt_different_sized_ops=true
#       when mesh.data > 1: overlap the data-parallel gradient all-reduce with the backward pass
#   --xla_enable_async_collective_permute=true             ring / pipeline collective permutes
#   --xla_tpu_scoped_vmem_limit_kib=98304                  more VMEM for large fused kernels (v5p / v6e)
#   --xla_tpu_enable_async_collective_fusion_fuse_all_reduce=true   also fuse all-reduces
DEFAULT_LIBTPU_INIT_ARGS="--xla_tpu_enable_async_collective_fusion=true \
--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true \
--xla_tpu_enable_async_collective_fusion_multiple_steps=true \
--xla_tpu_overlap_compute_collective_tc=true \
--xla_enable_async_all_gather=true"
LIBTPU_INIT_ARGS="${RPO_LIBTPU_INIT_ARGS-$DEFAULT_LIBTPU_INIT_ARGS}"
DRY_RUN="${RPO_DRY_RUN:-0}"
OVERRIDES=()
CREATED=0   # set by cmd_create when it (re)creates the slice

usage() {
  cat <<EOF
Usage: launch/tpu_pod.sh COMMAND [flags]

Commands:
  create   create the TPU VM slice (reuse it when READY; recreate it when PREEMPTED); with --queued: reuse an
           ACTIVE queued resource whose nodes are READY, delete and request again a SUSPENDED / FAILED one
           (or one whose node is gone), wait for one still queued
  setup    copy the project to every worker, install it with the tpu extra, copy or mount the data
  train    start \`rpo-jax train\` on every worker in the background (nohup, one log per worker)
  resume   create (if preempted) + setup + train with --resume (latest complete checkpoint)
  stop     send SIGTERM to the trainer on every worker (it saves a checkpoint, then exits)
  logs     print the last lines of each worker's log
  delete   delete the TPU VM slice (--queued / --num-slices: the queued resource and its nodes)
  all      create + setup + train

Flags (environment variable in brackets, then the default):
  --name NAME               [RPO_TPU_NAME] $TPU_NAME
  --zone ZONE               [RPO_ZONE] $ZONE
  --project PROJECT         [RPO_PROJECT] gcloud's configured project
  --accelerator-type TYPE   [RPO_ACCELERATOR_TYPE] $ACCELERATOR_TYPE
  --version VERSION         [RPO_RUNTIME_VERSION] $RUNTIME_VERSION
  --spot                    [RPO_SPOT=1] spot (preemptible) capacity
  --queued                  [RPO_QUEUED=1] create through queued resources and wait until ACTIVE
  --num-slices N            [RPO_NUM_SLICES] $NUM_SLICES; N > 1: multislice, N slices of --accelerator-type through
                            queued resources (implies --queued), trained data parallel across them (mesh.dcn_data=N)
  --config PATH             [RPO_CONFIG] $CONFIG
  --output-dir DIR          [RPO_OUTPUT_DIR] required by train/resume/all: gs://BUCKET/PATH, or an absolute
                            path on storage every worker mounts (Filestore/NFS)
  --data PATH               [RPO_DATA] gs://... or local dir of tokenized shards -> data.train_path
  --eval-data PATH          [RPO_EVAL_DATA] held-out shards, the same way -> data.eval_path (needed with
                            --data); none = evaluate nothing (train.eval_every=0)
  --data-mode MODE          [RPO_DATA_MODE] $DATA_MODE (copy | gcsfuse)
  --steps N                 [RPO_STEPS] the config's train.steps
  --set KEY=VALUE           config override passed to rpo-jax train (repeatable)
  --git-url URL             [RPO_GIT_URL] clone this on the workers instead of shipping git archive HEAD
  --git-ref REF             [RPO_GIT_REF] $GIT_REF
  --compilation-cache DIR   [RPO_COMPILATION_CACHE] <output-dir>/jax_compilation_cache ("" = none)
  --worker W                [RPO_WORKER] $WORKER (for logs)
  --dry-run                 [RPO_DRY_RUN=1] print every command, run nothing
  -h, --help                this help
Also: RPO_REMOTE_PYTHON ($REMOTE_PYTHON), RPO_REMOTE_DIR, RPO_REMOTE_VENV, RPO_REMOTE_DATA_DIR,
RPO_REMOTE_EVAL_DATA_DIR, RPO_REMOTE_LOG_DIR, RPO_LOG_LINES, RPO_LIBTPU_INIT_ARGS, TPU_STDERR_LOG_LEVEL, TPU_MIN_LOG_LEVEL,
RPO_POLL_SECONDS ($POLL_SECONDS: seconds between queued-resource state checks while waiting).
EOF
}

COMMAND=""
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --num-slices) NUM_SLICES="$(flag_value "$@")"; shift ;;
    --name) TPU_NAME="$(flag_value "$@")"; shift ;;
    --zone) ZONE="$(flag_value "$@")"; shift ;;
    --project) PROJECT="$(flag_value "$@")"; shift ;;
    --accelerator-type) ACCELERATOR_TYPE="$(flag_value "$@")"; shift ;;
    --version) RUNTIME_VERSION="$(flag_value "$@")"; shift ;;
    --config) CONFIG="$(flag_value "$@")"; shift ;;
    --output-dir) OUTPUT_DIR="$(flag_value "$@")"; shift ;;
    --data) DATA="$(flag_value "$@")"; shift ;;
    --eval-data) EVAL_DATA="$(flag_value "$@")"; shift ;;
    --compilation-cache) COMPILATION_CACHE="$(flag_value "$@")"; shift ;;
    --data-mode) DATA_MODE="$(flag_value "$@")"; shift ;;
    --steps) STEPS="$(flag_value "$@")"; shift ;;
    --set) OVERRIDES+=("$(flag_value "$@")"); shift ;;
    --git-url) GIT_URL="$(flag_value "$@")"; shift ;;
    --git-ref) GIT_REF="$(flag_value "$@")"; shift ;;
    --worker) WORKER="$(flag_value "$@")"; shift ;;
    -*) die "unknown flag: $1 (see --help)" ;;
    *)
      [[ -z "$COMMAND" ]] || die "only one command allowed, got '$COMMAND' and '$1'"
      COMMAND="$1" ;;
  esac
  shift
done
[[ -n "$COMMAND" ]] || { usage >&2; die "missing COMMAND"; }
case "$DATA_MODE" in copy | gcsfuse) ;; *) die "--data-mode must be copy or gcsfuse, got '$DATA_MODE'" ;; esac
[[ -z "$STEPS" || "$STEPS" =~ ^[0-9]+$ ]] || die "--steps must be a non-negative integer, got '$STEPS'"
[[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]] || die "--num-slices must be a positive integer, got '$NUM_SLICES'"
[[ "$POLL_SECONDS" =~ ^[0-9]+$ ]] || die "RPO_POLL_SECONDS must be a non-negative integer, got '$POLL_SECONDS'"
# Multislice exists only through queued resources (one request for all slices, which come up together).
((NUM_SLICES == 1)) || QUEUED=1
[[ "$DATA_MODE" == copy || -z "$DATA" || "$DATA" == gs://* ]] || die "--data-mode gcsfuse needs a gs:// --data"
[[ "$DATA_MODE" == copy || -z "$EVAL_DATA" || "$EVAL_DATA" == none || "$EVAL_DATA" == gs://* ]] ||
  die "--data-mode gcsfuse needs a gs:// --eval-data"
COMPILATION_CACHE="${COMPILATION_CACHE//__OUTPUT_DIR__/$OUTPUT_DIR}"
[[ "$LIBTPU_INIT_ARGS" != *[\"\'\$\`\\]* ]] || die "RPO_LIBTPU_INIT_ARGS must not contain quotes, \$, \` or \\"
[[ "$DATA" == gs://* || ! "$DATA" =~ ^[A-Za-z][A-Za-z0-9+.-]*:// ]] ||
  die "--data must be gs://... (copied or mounted on the workers) or a local directory, got '$DATA'"
[[ "$EVAL_DATA" == gs://* || ! "$EVAL_DATA" =~ ^[A-Za-z][A-Za-z0-9+.-]*:// ]] ||
  die "--eval-data must be gs://... (copied or mounted on the workers) or a local directory, got '$EVAL_DATA'"
[[ -z "$DATA" || -n "$EVAL_DATA" ]] || die "--data replaces data.train_path only: pass --eval-data too (held-out \
shards for the step-0 and every train.eval_every evaluation), or --eval-data none to evaluate nothing"

GCLOUD_SCOPE=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || GCLOUD_SCOPE+=(--project="$PROJECT")

# Runs COMMAND on the given workers (all by default) of the slice over gcloud's ssh; with several slices, on those
# workers of every slice (queued-resources ssh --node=all).
on_workers() {  # on_workers WORKERS REMOTE_COMMAND
  if ((NUM_SLICES > 1)); then
    run gcloud compute tpus queued-resources ssh "$TPU_NAME" "${GCLOUD_SCOPE[@]}" --node=all --worker="$1" \
      --command="$2"
  else
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_SCOPE[@]}" --worker="$1" --command="$2"
  fi
}

# Copies a local file (or, with --recurse, a folder) to REMOTE_PATH under $HOME on every worker of every slice.
to_workers() {  # to_workers SOURCE REMOTE_PATH [--recurse]
  local flags=("${@:3}")
  if ((NUM_SLICES > 1)); then
    run gcloud compute tpus queued-resources scp "${flags[@]}" "$1" "$TPU_NAME:$2" "${GCLOUD_SCOPE[@]}" --node=all \
      --worker=all
  else
    run gcloud compute tpus tpu-vm scp "${flags[@]}" "$1" "$TPU_NAME:$2" "${GCLOUD_SCOPE[@]}" --worker=all
  fi
}

read_node_state() {  # read_node_state NODE: sets NODE_STATE to READY / PREEMPTED / ..., or "" when it does not exist
  local describe=(gcloud compute tpus tpu-vm describe "$1" "${GCLOUD_SCOPE[@]}" --format="value(state)")
  show "${describe[@]}"
  if [[ "$DRY_RUN" == 1 ]]; then
    note "dry run: assuming $1 does not exist yet"
    NODE_STATE=""
  else
    NODE_STATE="$("${describe[@]}" 2>/dev/null || true)"
  fi
}

# Prints the queued resource's state (ACCEPTED, PROVISIONING, ACTIVE, SUSPENDED, FAILED, ...), nothing when it
# does not exist.
queued_state() {
  gcloud compute tpus queued-resources describe "$TPU_NAME" "${GCLOUD_SCOPE[@]}" --format="value(state.state)" \
    2>/dev/null || true
}

show_queued_describe() {
  show gcloud compute tpus queued-resources describe "$TPU_NAME" "${GCLOUD_SCOPE[@]}" --format="value(state.state)"
}

# The TPU VM names of the queued resource: --node-id NAME for one slice, --node-prefix NAME for several (NAME-0 ...).
node_names() {
  if ((NUM_SLICES == 1)); then echo "$TPU_NAME"; else seq -f "$TPU_NAME-%g" 0 $((NUM_SLICES - 1)); fi
}

cmd_delete() {
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$TPU_NAME" "${GCLOUD_SCOPE[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_SCOPE[@]}" --quiet
  fi
}

cmd_create() {
  if [[ "$QUEUED" == 1 ]]; then create_queued; else create_node; fi
}

create_node() {
  read_node_state "$TPU_NAME"
  case "$NODE_STATE" in
    READY) note "TPU $TPU_NAME is READY: reusing it"; return 0 ;;
    PREEMPTED | TERMINATED) note "TPU $TPU_NAME is $NODE_STATE: deleting it and creating it again"; cmd_delete ;;
    "") ;;
    *) die "TPU $TPU_NAME is in state $NODE_STATE; wait for READY or run \`delete\` first" ;;
  esac
  CREATED=1
  local capacity=()
  [[ "$SPOT" != 1 ]] || capacity=(--spot)
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_SCOPE[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${capacity[@]}"
}

# A preempted queued resource is SUSPENDED with its nodes deleted, and its name stays taken until it is deleted: so
# it is deleted (waiting until it is gone) and requested again, and the fresh workers are set up (CREATED=1).
create_queued() {
  show_queued_describe
  local state=""
  if [[ "$DRY_RUN" == 1 ]]; then
    note "dry run: assuming queued resource $TPU_NAME does not exist yet (ACTIVE with READY nodes is reused; \
SUSPENDED / FAILED is deleted and requested again)"
  else
    state="$(queued_state)"
  fi
  case "$state" in
    ACTIVE)
      if queued_nodes_ready; then
        note "queued resource $TPU_NAME is ACTIVE, its nodes READY: reusing them"
        return 0
      fi
      note "queued resource $TPU_NAME is ACTIVE but a node is gone or not READY: deleting it and requesting it again"
      delete_queued_and_wait ;;
    SUSPENDING | SUSPENDED | FAILED)
      note "queued resource $TPU_NAME is $state (preempted, or never provisioned): deleting it and requesting it again"
      delete_queued_and_wait ;;
    DELETING) note "queued resource $TPU_NAME is DELETING: waiting until it is gone"; wait_until_queued_gone ;;
    CREATING | ACCEPTED | WAITING_FOR_RESOURCES | PROVISIONING)
      note "queued resource $TPU_NAME is $state (requested earlier): waiting for it"
      CREATED=1; wait_for_queued; return 0 ;;
    "") ;;
    *) die "queued resource $TPU_NAME is in state $state; wait, or run \`delete --queued\` first" ;;
  esac
  CREATED=1
  local capacity=() nodes=(--node-id="$TPU_NAME")
  [[ "$SPOT" != 1 ]] || capacity=(--spot)
  ((NUM_SLICES == 1)) || nodes=(--node-count="$NUM_SLICES" --node-prefix="$TPU_NAME")
  run gcloud compute tpus queued-resources create "$TPU_NAME" "${GCLOUD_SCOPE[@]}" "${nodes[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" "${capacity[@]}"
  wait_for_queued
}

queued_nodes_ready() {  # true when every TPU VM of the queued resource exists and is READY
  local node
  for node in $(node_names); do
    read_node_state "$node"
    [[ "$NODE_STATE" == READY ]] || { note "TPU $node is ${NODE_STATE:-gone}"; return 1; }
  done
}

delete_queued_and_wait() {
  cmd_delete
  wait_until_queued_gone
}

wait_until_queued_gone() {
  if [[ "$DRY_RUN" == 1 ]]; then
    show_queued_describe
    note "(repeated every $POLL_SECONDS s until it is gone)"
    return 0
  fi
  local state
  while state="$(queued_state)"; [[ -n "$state" ]]; do
    note "queued resource $TPU_NAME is $state; checking again in $POLL_SECONDS s"
    sleep "$POLL_SECONDS"
  done
}

wait_for_queued() {
  if [[ "$DRY_RUN" == 1 ]]; then
    show_queued_describe
    note "(repeated every $POLL_SECONDS s until ACTIVE)"
    return 0
  fi
  local state
  while state="$(queued_state)"; [[ "$state" != ACTIVE ]]; do
    case "$state" in
      SUSPENDING | SUSPENDED | FAILED | "") die "queued resource $TPU_NAME is ${state:-gone} instead of ACTIVE \
(gcloud compute tpus queued-resources describe $TPU_NAME says why); run \`resume --queued\` to request it again" ;;
    esac
    note "queued resource $TPU_NAME is $state; checking again in $POLL_SECONDS s"
    sleep "$POLL_SECONDS"
  done
}

cmd_setup() {
  local q_dir q_venv
  q_dir="$(printf %q "$REMOTE_DIR")"; q_venv="$(printf %q "$REMOTE_VENV")"
  if [[ -n "$GIT_URL" ]]; then
    on_workers all "rm -rf $q_dir && git clone --depth 1 --branch $(printf %q "$GIT_REF") \
$(printf %q "$GIT_URL") $q_dir"
  else
    local archive="/tmp/rpo-jax-launch.XXXXXX/rpo-jax.tar.gz"
    if [[ "$DRY_RUN" != 1 ]]; then
      [[ -z "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no)" ]] ||
        note "WARNING: uncommitted changes are NOT shipped (git archive HEAD); commit them or use --git-url"
      archive="$(mktemp -d)/rpo-jax.tar.gz"
    fi
    run git -C "$REPO_ROOT" archive --format=tar.gz --prefix="$REMOTE_DIR/" -o "$archive" HEAD
    to_workers "$archive" rpo-jax-src.tar.gz
    on_workers all "rm -rf $q_dir && tar -xzf rpo-jax-src.tar.gz && rm rpo-jax-src.tar.gz"
  fi
  # TPU VM images ship Python 3.10 and the project needs >= 3.11: uv provides the interpreter.
  on_workers all "python3 -m pip install --user --quiet uv && \
~/.local/bin/uv venv --seed --allow-existing --python $(printf %q "$REMOTE_PYTHON") $q_venv && \
cd $q_dir && ~/$q_venv/bin/python -m pip install -e \".[tpu]\""
  setup_data
}

setup_data() {
  if [[ -z "$DATA" ]]; then
    note "no --data: the config's data.train_path must already be readable on every worker"
  else
    setup_dataset "$DATA" "$REMOTE_DATA_DIR" --data
  fi
  [[ -z "$EVAL_DATA" || "$EVAL_DATA" == none ]] || setup_dataset "$EVAL_DATA" "$REMOTE_EVAL_DATA_DIR" --eval-data
}

# Copies (or mounts) one dataset to the same path under every worker's $HOME.
setup_dataset() {  # setup_dataset SOURCE REMOTE_DIR FLAG
  local source="$1" remote="$2" q_remote
  q_remote="$(printf %q "$remote")"
  if [[ "$source" == gs://* && "$DATA_MODE" == gcsfuse ]]; then
    local bucket="${source#gs://}" prefix=""
    [[ "$bucket" != */* ]] || { prefix="${bucket#*/}"; bucket="${bucket%%/*}"; }
    local only_dir=""
    [[ -z "$prefix" ]] || only_dir="--only-dir $(printf %q "${prefix%/}") "
    on_workers all "command -v gcsfuse >/dev/null || { echo 'gcsfuse is not installed on this worker' >&2; \
exit 1; }; mkdir -p $q_remote && (mountpoint -q $q_remote || gcsfuse --implicit-dirs $only_dir$(printf %q "$bucket") \
$q_remote)"
  elif [[ "$source" == gs://* ]]; then
    on_workers all "mkdir -p $q_remote && gsutil -m rsync -r $(printf %q "$source") $q_remote"
  else
    [[ "$DRY_RUN" == 1 || -d "$source" ]] || die "$3 $source: not a gs:// path and not a local directory"
    on_workers all "rm -rf $q_remote"
    to_workers "$source" "$remote" --recurse
  fi
}

# Checked before create / setup, so a bad --output-dir fails before anything is paid for.
check_output_dir() {
  [[ -n "$OUTPUT_DIR" ]] || die "--output-dir is required: gs://BUCKET/PATH, or an absolute path on storage every \
worker mounts (Filestore/NFS), so all hosts share checkpoints"
  [[ "$OUTPUT_DIR" == gs://* || ! "$OUTPUT_DIR" =~ ^[A-Za-z][A-Za-z0-9+.-]*:// ]] || die "--output-dir \
$OUTPUT_DIR: only gs:// URLs are supported (or an absolute path on a share every worker mounts)"
  # A relative path would live inside the project copy, which \`setup\` replaces.
  [[ "$OUTPUT_DIR" == gs://* || "$OUTPUT_DIR" == /* ]] ||
    die "--output-dir must be gs://BUCKET/PATH or an absolute path, got '$OUTPUT_DIR'"
  [[ -z "$COMPILATION_CACHE" || "$COMPILATION_CACHE" == /* || "$COMPILATION_CACHE" == gs://* ]] ||
    die "--compilation-cache must be gs://... or an absolute path on the workers, got '$COMPILATION_CACHE'"
  [[ "$OUTPUT_DIR" == gs://* ]] || note "--output-dir $OUTPUT_DIR must be the same shared directory (Filestore/NFS \
mount) on every worker: a worker's own disk is lost with a preempted VM, and multi-host checkpoints need one \
shared directory"
}

cmd_train() {  # cmd_train [--resume]
  local train=(train --config "$CONFIG" --output-dir "$OUTPUT_DIR")
  [[ -z "$STEPS" ]] || train+=(--steps "$STEPS")
  train+=("$@")
  [[ -z "$DATA" ]] || train+=(--set "data.train_path=__DATA__")
  if [[ "$EVAL_DATA" == none ]]; then
    train+=(--set "data.eval_path=" --set "train.eval_every=0")
  elif [[ -n "$EVAL_DATA" ]]; then
    train+=(--set "data.eval_path=__EVAL_DATA__")
  fi
  # The trainer applies the compilation cache itself (rpo_jax/runtime/compilation_cache.py); "" turns it off.
  train+=(--set "train.compilation_cache_dir=$COMPILATION_CACHE")
  # The mesh's data axis spans the slices (rpo_jax/runtime/multislice.py); a --set below may still override it.
  ((NUM_SLICES == 1)) || train+=(--set "mesh.dcn_data=$NUM_SLICES")
  local override
  for override in "${OVERRIDES[@]}"; do train+=(--set "$override"); done
  local args="" arg
  for arg in "${train[@]}"; do args+=" $(printf %q "$arg")"; done
  args="${args//__DATA__/\$HOME/$(printf %q "$REMOTE_DATA_DIR")}"  # expanded on the worker
  args="${args//__EVAL_DATA__/\$HOME/$(printf %q "$REMOTE_EVAL_DATA_DIR")}"
  local log_dir log pid
  log_dir="$(printf %q "$REMOTE_LOG_DIR")"
  # shellcheck disable=SC2016  # $(hostname) and $! are expanded on each worker, not here
  log="$log_dir"'/train-$(hostname).log' pid="$log_dir"'/train-$(hostname).pid'
  # Only the trainer goes to the background, so a failed `cd` or a running trainer fails the ssh call.
  # shellcheck disable=SC2016
  on_workers all "cd ~ && mkdir -p $log_dir && if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then \
echo \"rpo-jax train is already running on \$(hostname)\" >&2; exit 1; fi; cd $(printf %q "$REMOTE_DIR") && \
export LIBTPU_INIT_ARGS=\"$LIBTPU_INIT_ARGS\" TPU_STDERR_LOG_LEVEL=$TPU_STDERR_LOG_LEVEL \
TPU_MIN_LOG_LEVEL=$TPU_MIN_LOG_LEVEL && { nohup ~/$(printf %q "$REMOTE_VENV")/bin/rpo-jax$args \
> ~/$log 2>&1 < /dev/null & echo \$! > ~/$pid; }"
  note "started on every worker; follow with: launch/tpu_pod.sh logs --name $TPU_NAME --zone $ZONE"
}

cmd_stop() {
  local pid
  # shellcheck disable=SC2016
  pid="$(printf %q "$REMOTE_LOG_DIR")"'/train-$(hostname).pid'
  on_workers all "if [ -f $pid ]; then kill -TERM \"\$(cat $pid)\" 2>/dev/null || true; rm -f $pid; fi"
}

cmd_logs() {
  on_workers "$WORKER" "tail -n $(printf %q "$LOG_LINES") $(printf %q "$REMOTE_LOG_DIR")/train-*.log"
}

note "tpu_pod.sh $COMMAND: TPU $TPU_NAME ($NUM_SLICES x $ACCELERATOR_TYPE, $RUNTIME_VERSION, spot=$SPOT, \
queued=$QUEUED) \
in ${PROJECT:-<default project>}/$ZONE; config $CONFIG; output ${OUTPUT_DIR:-<unset>}; data ${DATA:-<config>}, \
eval ${EVAL_DATA:-<config>} ($DATA_MODE); compilation cache ${COMPILATION_CACHE:-none}; \
steps ${STEPS:-<config>}; overrides: ${OVERRIDES[*]:-none}; dry run=$DRY_RUN"
case "$COMMAND" in
  create) cmd_create ;;
  setup) cmd_setup ;;
  train) check_output_dir; cmd_train ;;
  resume)
    check_output_dir
    # A recreated slice has empty disks: set it up again. A READY one keeps its install and data.
    cmd_create
    [[ "$CREATED" == 0 ]] || cmd_setup
    cmd_train --resume ;;
  stop) cmd_stop ;;
  logs) cmd_logs ;;
  delete) cmd_delete ;;
  all) check_output_dir; cmd_create; cmd_setup; cmd_train ;;
  *) die "unknown command '$COMMAND' (see --help)" ;;
esac
