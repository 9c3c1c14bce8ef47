"""TRL 1.16 side of `rpo-jax bench --compare trl`, run in its own process; its peak RSS is its own
`VmHWM` (not `ru_maxrss`, which inherits the parent's peak across fork/exec).

    python -m benchmarks.trl_step SPEC.json RESULT.json

SPEC holds the HF model folder (our weights via `export_hf`), the pre-tokenized examples, dtype, beta, reference
mode and step counts. TRL's own `Trainer.train()` runs `warmup + steps` optimizer steps over the same batch
repeated (sequential sampler): collate, policy (+ reference) forward, backward, grad clipping, AdamW, scheduler.
A callback times each step from `on_step_begin` to `on_step_end`.

The pre-tokenized dataset goes straight to the collator: `_prepare_dataset` (text → ids) is skipped because the
ids already exist; nothing in the training step is changed.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """This process's own RSS high-water mark (`VmHWM`, kB). `ru_maxrss` would not do: Linux keeps it across the
    fork/exec that started this process, so it reports at least the parent benchmark's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")


def run(spec: dict) -> dict:
    import datasets
    import torch
    import transformers
    import trl
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    baseline_rss = _current_rss()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[spec["dtype"]]
    policy = LlamaForCausalLM.from_pretrained(spec["hf_dir"], dtype=dtype)
    reference = None
    if spec["reference_mode"] == "separate":
        reference = LlamaForCausalLM.from_pretrained(spec["hf_dir"], dtype=dtype)
    elif spec["reference_mode"] != "precomputed":
        raise ValueError(
            f"TRL comparison supports reference modes separate and precomputed, not "
            f"{spec['reference_mode']!r} (LoRA needs peft, which is not installed)"
        )

    # A stand-in tokenizer: the trainer needs one to be constructed; every id comes pre-tokenized.
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<pad>")),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )

    class PreTokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    examples = spec["examples"]
    total = spec["warmup"] + spec["steps"]
    columns = {k: [ex[k] for ex in examples] * total for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
    dataset = datasets.Dataset.from_dict(columns)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out_dir:
        args = DPOConfig(
            output_dir=out_dir,
            report_to=[],
            use_cpu=True,
            bf16=False,
            fp16=False,
            beta=spec["beta"],
            loss_type=["sigmoid"],
            per_device_train_batch_size=len(examples),
            max_steps=total,
            learning_rate=1e-6,
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            weight_decay=0.0,
            max_length=None,
            train_sampling_strategy="sequential",
            save_strategy="no",
            logging_steps=10**9,
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            precompute_ref_log_probs=spec["reference_mode"] == "precomputed",
            seed=0,
        )
        trainer = PreTokenizedDPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer],
        )
        start = time.perf_counter()
        trainer.train()
        train_wall = time.perf_counter() - start
    timed = timer.times[spec["warmup"] :]
    if len(timer.times) != total:
        raise RuntimeError(f"TRL ran {len(timer.times)} steps, expected {total}")
    return {
        "trl_step_time_s": statistics.median(timed),
        "trl_step_times_s": timed,
        "trl_warmup_times_s": timer.times[: spec["warmup"]],
        "trl_train_wall_s": train_wall,
        "trl_peak_memory_bytes": _peak_rss(),
        # What the earlier versions reported: max(the parent's peak at spawn, ours); kept to show the difference.
        "trl_ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "trl_baseline_rss_bytes": baseline_rss,
        "trl_torch_threads": torch.get_num_threads(),
        "trl_versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "datasets": datasets.__version__,
        },
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    result = run(spec)
    out = Path(argv[1])
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
