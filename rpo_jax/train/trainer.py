"""`rpo-jax train`: data → sharded policy/reference → jitted step loop → Orbax checkpoints → HF export.

Reads top to bottom: validate settings, build the mesh, loader, parameters and step, restore if resuming,
then loop. Metrics of step t are pulled to the host while step t+1 runs, so dispatch never waits on them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from data_pipeline.records.shards import read_manifest
from rpo_jax.config.loading import config_to_dict
from rpo_jax.config.schema import Config
from rpo_jax.io.checkpoints import StepCheckpointer, abstract_like
from rpo_jax.io.hf_export import export_hf
from rpo_jax.model.attention import describe_attention
from rpo_jax.runtime import distributed
from rpo_jax.runtime.preemption import NO_STOP, StopSignals, StopVote, stopped_early
from rpo_jax.runtime.sharding import batch_shardings, make_mesh
from rpo_jax.train.batches import model_inputs, open_loader, per_process_batch_size, to_global
from rpo_jax.train.evaluation import pair_metrics
from rpo_jax.train.hf_chat_files import run_chat_files
from rpo_jax.train.optim import make_optimizer
from rpo_jax.train.policy import build_policy
from rpo_jax.train.precompute import ensure_reference_logps
from rpo_jax.train.preflight import check_run_inputs
from rpo_jax.train.resume import ResumeRequest, restore_for_resume, run_fingerprints
from rpo_jax.train.run_data import check_output_dir, prepare_run_data
from rpo_jax.train.run_dir import prepare_output_dir
from rpo_jax.train.run_log import MetricsLog, Progress, TensorBoardLog, report_title, write_report
from rpo_jax.train.run_summary import closing_summary, eval_line
from rpo_jax.train.step import init_train_state, make_eval_step, make_train_step
from rpo_jax.train.step_record import check_step0, step_record


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
        self.loader = open_loader(
            cfg,
            cfg.data.train_path,
            self.per_process_batch,
            repeat=True,
            ref_logps=self.ref_logps.get(cfg.data.train_path),
        )
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
        self._eval_fn = None
        self.start_step = 0
        if resume is not None:
            self._resume(resume)
        if cfg.train.tensorboard and self.is_main:
            self.metrics_log.mirror = TensorBoardLog(
                self.output_dir / "tensorboard", purge_step=self.start_step if resume is not None else None
            )
            if resume is not None:  # evals at the resume step survive in the JSON lines, but the purge hides them
                for record in self.metrics_log.read():
                    if record["step"] == self.start_step:
                        self.metrics_log.mirror.write(record)

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

    def save(self, step: int, *, force: bool = False) -> None:
        meta = {"config": self.config_dict, **self.fingerprints, "step": step}
        self.checkpointer.save(step, self.state, self.loader.get_state(), meta, force=force)

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
        votes = StopVote(self.stop_signals)
        progress = Progress(cfg.train.steps, self.start_step, enabled=self.is_main)
        pending = None  # (step, metrics future, tokens)
        if cfg.train.eval_every and self.start_step == 0:
            self._log_eval(0, progress)  # the baseline: policy == reference
        self._last_done = time.perf_counter()
        self.stop_signals.install()
        try:
            for step in range(self.start_step, cfg.train.steps):
                batch, tokens = self.next_batch()
                self.state, metrics = self._step_fn(batch)(self.state, self.policy.frozen, self.policy.reference, batch)
                votes.cast()
                if pending is not None:
                    self._flush(pending, progress)
                pending = (step, metrics, tokens)
                done = step + 1
                self.stopped_by = votes.agreed()  # the same on every process at this step
                stop = self.stopped_by != NO_STOP
                must_save = done % cfg.checkpoint.save_every == 0 or done == cfg.train.steps or stop
                # The final model is always evaluated, whether or not eval_every divides train.steps.
                must_eval = bool(cfg.train.eval_every) and (done % cfg.train.eval_every == 0 or done == cfg.train.steps)
                if must_save or must_eval:
                    self._flush(pending, progress)
                    pending = None
                if must_eval:
                    self._log_eval(done, progress)
                if must_save:
                    self.save(done, force=stop)
                if must_save or must_eval:
                    self._last_done = time.perf_counter()  # keep eval/checkpoint time out of step timings
                if stop:
                    self.stopped_at = done
                    break
            if pending is not None:
                self._flush(pending, progress)
        finally:
            progress.close()
            if self.metrics_log.mirror is not None:
                self.metrics_log.mirror.close()
            self.checkpointer.wait()
            self.stop_signals.restore()
        return self.metrics_log.read()

    def _log_eval(self, done: int, progress: Progress) -> None:
        record = {"step": done, **self.evaluate()}
        self.metrics_log.write(record)
        if self.is_main:
            progress.write(eval_line(record))

    def _flush(self, pending, progress: Progress) -> None:
        """Pulls a step's metrics (blocking until it finished); its time is since the previous step finished."""
        step, metrics, tokens = pending
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        record = step_record(self.cfg, step, metrics, tokens, now - self._last_done, self.checkpointer.latest_step())
        self._last_done = now
        if step == 0 and self.start_step == 0:
            check_step0(self.cfg, record)
        # Every step is still pulled (non-finite checks); only every log_every-th one (and the last) is written.
        if step % self.cfg.train.log_every == 0 or step + 1 == self.cfg.train.steps:
            self.metrics_log.write(record)
        progress.update(record)

    def finish(self, records: list[dict]) -> Path | None:
        """report.png and the final HF export (LoRA merged) in `<output_dir>/hf`; returns the export folder."""
        self.checkpointer.close()
        params = self.policy.merged_params(self.state["params"], self.policy.frozen)
        export_dir = self.output_dir / "hf"
        if self.is_main:
            write_report(records, self.output_dir / "report.png", title=report_title(self.cfg, self.output_dir))
            if export_dir.exists():  # a re-run of a finished run replaces its export
                shutil.rmtree(export_dir)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("rpo_jax_old_export_removed")
        tokenizer = self.cfg.data.tokenizer_path or read_manifest(self.cfg.data.train_path)["tokenizer"]["path"]
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


def train(cfg: Config, *, resume: ResumeRequest | None = None, overwrite: bool = False) -> Path | None:
    """The whole run: settings, inputs and output folder checked, data tokenized when needed, trained,
    exported, summarised; returns the HF export folder (on process 0). A SIGTERM / SIGINT agreed on by every
    process (see rpo_jax.runtime.preemption) ends it after a checkpoint, exporting nothing."""
    started = time.perf_counter()
    with StopSignals() as signals:  # from the start: a SIGTERM while compiling still stops at step 1 or 2
        check_run_inputs(cfg)  # before tokenizing into it or compiling anything
        prepare_output_dir(cfg.train.output_dir, resume=resume is not None, overwrite=overwrite)
        cfg = prepare_run_data(cfg)
        trainer = Trainer(cfg, resume=resume, stop_signals=signals)
        records = trainer.fit()
    if stopped_early(trainer.stopped_by, trainer.stopped_at, cfg.train.steps, trainer.checkpointer, resume):
        return None  # nothing half-done is exported
    export_dir = trainer.finish(records)
    trainer.say(
        closing_summary(
            records,
            total_steps=cfg.train.steps,
            output_dir=trainer.output_dir,
            seconds=time.perf_counter() - started,
            latest_checkpoint=trainer.checkpointer.latest_step(),
            export_dir=export_dir,
        )
    )
    return export_dir
