"""`rpo-jax train`: data → sharded policy/reference → jitted step loop → Orbax checkpoints → HF export.

Reads top to bottom: validate settings, build the mesh, loader, parameters and step, restore if resuming,
then loop. Metrics of step t are pulled to the host while step t+1 runs, so dispatch never waits on them.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from data_pipeline.storage import remove_tree
from rpo_jax.config.loading import config_to_dict
from rpo_jax.config.schema import Config
from rpo_jax.io.checkpoints import StepCheckpointer, abstract_like
from rpo_jax.io.hf_export import export_hf
from rpo_jax.model.attention import describe_attention
from rpo_jax.runtime import distributed
from rpo_jax.runtime.compilation_cache import enable_compilation_cache, run_cache_dir
from rpo_jax.runtime.preemption import NO_STOP, HostVote, StopSignals, stopped_early, wait_for
from rpo_jax.runtime.sharding import batch_shardings, make_mesh
from rpo_jax.train.batches import model_inputs, open_loader, open_train_loader, per_process_batch_size, to_global
from rpo_jax.train.evaluation import make_eval_step, pair_metrics
from rpo_jax.train.hf_chat_files import run_chat_files, run_tokenizer_dir
from rpo_jax.train.mixture_report import mixture_values, report_mixture
from rpo_jax.train.optim import make_optimizer
from rpo_jax.train.policy import build_policy
from rpo_jax.train.precompute import ensure_reference_logps
from rpo_jax.train.preflight import check_run_inputs
from rpo_jax.train.resume import ResumeRequest, restore_for_resume, run_fingerprints
from rpo_jax.train.run_data import check_output_dir, prepare_run_data
from rpo_jax.train.run_dir import prepare_output_dir
from rpo_jax.train.run_log import MetricsLog, Progress, report_title, write_report
from rpo_jax.train.run_summary import closing_summary, eval_line
from rpo_jax.train.step import init_train_state, make_train_step
from rpo_jax.train.step_record import check_step0, step_record
from rpo_jax.train.trackers import open_trackers


class Trainer:
    def __init__(self, cfg: Config, *, resume: ResumeRequest | None = None, stop_signals: StopSignals | None = None):
        self.cfg = cfg
        self.stop_signals = stop_signals or StopSignals()
        self.stopped_by, self.stopped_at = NO_STOP, None  # set when a signal stopped fit() (see preemption)
        distributed.maybe_initialize()
        self.mesh = make_mesh(cfg.mesh)
        self.per_process_batch = per_process_batch_size(cfg, self.mesh)
        self.is_main = jax.process_index() == 0
        self.output_dir = check_output_dir(cfg.train.output_dir)
        self.fingerprints = run_fingerprints(cfg)
        self.ref_logps = ensure_reference_logps(cfg) if cfg.train.reference_mode == "precomputed" else {}
        self.loader = open_train_loader(cfg, self.per_process_batch, self.ref_logps.get(cfg.data.train_path))
        self.policy = build_policy(cfg, self.mesh, cfg.train.init_checkpoint)
        if self.is_main:  # what model.attention resolved to (auto differs per chip), the packing plan
            plan = f"\npacking ({cfg.data.packing}): {self.loader.packing}" if cfg.data.packing != "none" else ""
            print(describe_attention(cfg.model, self.mesh, cfg.data.packing) + plan, flush=True)
        self.optimizer, self.schedule = make_optimizer(cfg.optim, cfg.train.steps)
        self.state, self.state_sh = init_train_state(self.policy, self.optimizer, cfg.train.seed, self.mesh)
        self.checkpointer = StepCheckpointer(
            self.output_dir / "checkpoints", keep_last=cfg.checkpoint.keep_last, async_save=cfg.checkpoint.async_save
        )
        self.metrics_log = MetricsLog(self.output_dir / "metrics.jsonl", enabled=self.is_main)
        self.config_dict = config_to_dict(cfg)
        self._step_fns: dict = {}
        # What this process answers when a step asks, before and after each micro-batch (see preemption).
        self.host_vote = HostVote(self.stop_signals, save_every_minutes=cfg.checkpoint.save_every_minutes)
        self._eval_fn = None
        self.start_step = 0
        if resume is not None:
            self._resume(resume)
        at_resume = (
            [r for r in self.metrics_log.read() if r["step"] == self.start_step] if resume and self.is_main else []
        )
        self.trackers = open_trackers(  # process 0 only; closed by train()
            cfg,
            self.output_dir,
            is_main=self.is_main,
            start={**self.config_dict, "fingerprints": self.fingerprints},
            resumed_at=self.start_step if resume is not None else None,
            records_at_resume=at_resume,
        )
        self.metrics_log.mirror = self.trackers

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _resume(self, request: ResumeRequest) -> None:
        """Continues from a verified checkpoint (see rpo_jax.train.resume); with none, starts fresh."""
        abstract = abstract_like(self.state)
        restore = lambda step: self.checkpointer.restore(step, abstract)
        found = restore_for_resume(self.checkpointer, restore, request, self.config_dict, self.fingerprints, self.say)
        if found is None:
            self.metrics_log.truncate_to(0)  # lines of an attempt killed before its first checkpoint
            return
        step, (self.state, iter_state, _) = found
        self.loader.set_state(iter_state)
        self.start_step = step
        self.metrics_log.truncate_to(step)
        self.say(f"resumed from step {step} of {self.cfg.train.steps}")

    def say(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)

    def save(self, step: int, *, force: bool = False, data_state: dict | None = None) -> None:
        """`data_state`: the loader's position to store (default: now, after the batches of `step` steps)."""
        meta = {"config": self.config_dict, **self.fingerprints, "step": step}
        data_state = self.loader.get_state() if data_state is None else data_state
        self.checkpointer.save(step, self.state, data_state, meta, force=force)

    # -- steps -----------------------------------------------------------------------------------------------
    def _step_fn(self, batch: dict):
        shape_key = tuple(sorted((k, v.shape) for k, v in batch.items()))
        if shape_key not in self._step_fns:  # one compile per length bucket
            self._step_fns[shape_key] = make_train_step(
                self.cfg,
                self.policy,
                self.optimizer,
                self.schedule,
                self.mesh,
                self.state_sh,
                batch_shardings(batch, self.mesh),
                self.host_vote,
            )
        return self._step_fns[shape_key]

    def next_batch(self) -> tuple[dict, int]:
        local = model_inputs(next(self.loader), self.cfg)
        tokens = int(np.asarray(local["segment_ids"]).astype(bool).sum()) * jax.process_count()
        return to_global(local, self.mesh), tokens

    def evaluate(self) -> dict[str, float]:
        """Metrics over the whole held-out set (one pass, no shuffle needed: order does not matter)."""
        if self._eval_fn is None:
            self._eval_fn = make_eval_step(self.cfg, self.policy, self.mesh)
        path = self.cfg.data.eval_path
        batches = open_loader(self.cfg, path, self.per_process_batch, repeat=False, ref_logps=self.ref_logps.get(path))
        metrics = pair_metrics(
            self._eval_fn, self.state["params"], self.policy.frozen, self.policy.reference, batches, self.cfg, self.mesh
        )
        return {f"eval/{k}": v for k, v in metrics.items()}

    def fit(self) -> list[dict]:
        cfg = self.cfg
        progress = Progress(cfg.train.steps, self.start_step, enabled=self.is_main)
        self._pending = None  # (step, metrics future, tokens, done_at or None): pulled while the next step runs
        self._save_requested = False  # a wall-clock save, asked for by a step (the same on every process)
        data_states: dict[int, dict] = {}  # the loader's position before each step in flight
        if cfg.train.eval_every and self.start_step == 0:
            self._log_eval(0, progress)  # the baseline: policy == reference
        self._last_done = time.perf_counter()
        self.stop_signals.install()
        try:
            for step in range(self.start_step, cfg.train.steps):
                data_states = {s: d for s, d in data_states.items() if s >= step - 1} | {step: self.loader.get_state()}
                batch, tokens = self.next_batch()
                self.state, metrics = self._step_fn(batch)(self.state, self.policy.frozen, self.policy.reference, batch)
                # XLA:CPU runs a program with host callbacks (the in-step stop vote) before the call returns, so the
                # step may be done already: its time ends here, not when it is pulled after the next one ran.
                done_at = time.perf_counter() if all(x.is_ready() for x in jax.tree.leaves(metrics)) else None
                self._flush(progress)  # the previous step, while this one runs
                self._pending = (step, metrics, tokens, done_at)
                done = step + 1
                must_save = done % cfg.checkpoint.save_every == 0 or self._save_requested or done == cfg.train.steps
                # The final model is always evaluated, whether or not eval_every divides train.steps.
                must_eval = bool(cfg.train.eval_every) and (done % cfg.train.eval_every == 0 or done == cfg.train.steps)
                if must_save or must_eval or self.stopped_by != NO_STOP:
                    self._flush(progress)
                if self.stopped_by != NO_STOP:  # agreed inside a step by every process (see preemption)
                    self._save_at_stop(data_states)
                    break
                if must_eval:
                    self._log_eval(done, progress)
                if must_save:
                    self.save(done)
                    self.host_vote.saved()
                    self._save_requested = False
                if must_save or must_eval:
                    self._last_done = time.perf_counter()  # keep eval/checkpoint time out of step timings
            self._flush(progress)
        finally:
            progress.close()
            self.checkpointer.wait()
            self.stop_signals.restore()
        return self.metrics_log.read()

    def _save_at_stop(self, data_states: dict[int, dict]) -> None:
        """Saves the last complete state: a step cut short by the stop changed nothing (nor did the one in flight
        behind it), so the state's own step count says which, and its data position is the one before that step
        (the loader's present one when no step after it was drawn)."""
        wait_for(self.state)
        self.stopped_at = int(jax.device_get(self.state["step"]))
        if self.checkpointer.latest_step() != self.stopped_at:
            self.save(self.stopped_at, force=True, data_state=data_states.get(self.stopped_at))

    def _log_eval(self, done: int, progress: Progress) -> None:
        record = {"step": done, **self.evaluate()}
        self.metrics_log.write(record)
        if self.is_main:
            progress.write(eval_line(record))

    def _flush(self, progress: Progress) -> None:
        """Pulls the pending step's metrics, if any (waiting until it finished, signal handlers running meanwhile);
        its time is since the previous step finished (or since the evaluation or save after it). Notes the stop and
        save the step's vote agreed on; a step cut short by the stop is not recorded."""
        if self._pending is None:
            return
        (step, metrics, tokens, done_at), self._pending = self._pending, None
        wait_for(metrics)
        metrics = jax.device_get(metrics)
        self.stopped_by = max(self.stopped_by, int(metrics["stop"]))
        self._save_requested |= bool(metrics["save_requested"])
        ran, accum = int(metrics["micro_batches"]), self.cfg.train.grad_accum_steps
        if ran < accum:
            self.say(f"step {step} stopped after {ran} of {accum} micro-batches (dropped: it is redone on resume)")
            return
        now = done_at if done_at is not None else time.perf_counter()
        record = step_record(self.cfg, step, metrics, tokens, now - self._last_done, self.checkpointer.latest_step())
        self._last_done = now
        if step == 0 and self.start_step == 0:
            check_step0(self.cfg, record)
        # Every step is still pulled (non-finite checks); only every log_every-th one (and the last) is written.
        if step % self.cfg.train.log_every == 0 or step + 1 == self.cfg.train.steps:
            self.metrics_log.write(record)
        progress.update(record)

    def finish(self, records: list[dict]):
        """report.png and the final HF export (LoRA merged) in `<output_dir>/hf`; returns the export folder."""
        self.checkpointer.close()
        params = self.policy.merged_params(self.state["params"], self.policy.frozen)
        export_dir = self.output_dir / "hf"
        if self.is_main:
            write_report(records, self.output_dir / "report.png", title=report_title(self.cfg, self.output_dir))
            remove_tree(export_dir)  # a re-run of a finished run replaces its export
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("rpo_jax_old_export_removed")
        tokenizer = run_tokenizer_dir(self.cfg)
        # Every process takes part (one tensor at a time is gathered); process 0 writes.
        export_hf(
            params,
            self.cfg.model,
            self.cfg.lora,
            export_dir,
            tokenizer_dir=tokenizer if Path(tokenizer).is_dir() else None,
            extra_files=run_chat_files(self.cfg),
        )
        return export_dir if self.is_main else None


def train(cfg: Config, *, resume: ResumeRequest | None = None, overwrite: bool = False):
    """The whole run: settings, inputs and output folder checked, data tokenized when needed, trained,
    exported, summarised; returns the HF export folder (on process 0). A SIGTERM / SIGINT agreed on by every
    process (see rpo_jax.runtime.preemption) ends it after a checkpoint, exporting nothing."""
    started = time.perf_counter()
    enable_compilation_cache(run_cache_dir(cfg.train.compilation_cache_dir, cfg.train.output_dir))
    with StopSignals() as signals:  # from the start: a SIGTERM while compiling still stops at step 1 or 2
        check_run_inputs(cfg)  # before tokenizing into it or compiling anything
        prepare_output_dir(cfg.train.output_dir, resume=resume is not None, overwrite=overwrite)
        cfg = prepare_run_data(cfg)
        trainer = Trainer(cfg, resume=resume, stop_signals=signals)
        with trainer.trackers.close_if_raises():
            records = trainer.fit()
    with trainer.trackers.close_if_raises():
        done = trainer.checkpointer.latest_step()
        mixture = report_mixture(trainer.loader, done, cfg, trainer.output_dir, is_main=trainer.is_main)
        if stopped_early(trainer.stopped_by, trainer.stopped_at, cfg.train.steps, trainer.checkpointer, resume):
            trainer.trackers.close()
            return None  # nothing half-done is exported
        export_dir = trainer.finish(records)
        summary = closing_summary(
            records,
            total_steps=cfg.train.steps,
            output_dir=trainer.output_dir,
            seconds=time.perf_counter() - started,
            latest_checkpoint=done,
            export_dir=export_dir,
            mixture=mixture,
        )
        trainer.say(summary)
        trainer.trackers.finish(summary, {"steps_done": done or 0, **mixture_values(mixture)}, cfg.train.steps)
    return export_dir
