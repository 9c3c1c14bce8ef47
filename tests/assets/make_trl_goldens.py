"""Regenerates the TRL 1.16 DPO goldens used by tests/test_losses.py (needs torch + trl; CPU, fp32, seconds).

    /work/venv/bin/python tests/assets/make_trl_goldens.py

Writes next to this file:
  trl_tiny_llama.safetensors  policy and reference weights of a tiny random LlamaForCausalLM
                              (HF tensor names prefixed `policy.` / `reference.`)
  trl_goldens.json            model config, the pre-tokenized batch, and for each loss configuration the numbers
                              TRL's own code produced: per-sequence log-probs (`DPOTrainer.compute_ref_log_probs`),
                              the loss (`DPOTrainer.compute_loss`) and every logged metric (`trainer._metrics`).

Inputs are pre-tokenized ids collated by TRL's `DataCollatorForPreference`, so no tokenizer or truncation rule
enters the numbers (the trainer still needs a tokenizer and a dataset to be constructed; both are tiny stand-ins).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

HERE = Path(__file__).resolve().parent
VOCAB = 64
PAD_ID, EOS_ID = 0, 1
MODEL = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    rms_norm_eps=1e-5,
    max_position_embeddings=64,
    tie_word_embeddings=False,
    rope_theta=10000.0,
    initializer_range=0.3,
    bos_token_id=2,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
)
# Pre-tokenized examples with different prompt and response lengths; responses end with EOS as TRL appends it.
EXAMPLES = [
    {"prompt_ids": [2, 10, 11, 12], "chosen_ids": [20, 21, 22, 1], "rejected_ids": [30, 31, 1]},
    {"prompt_ids": [2, 13, 14, 15, 16, 17, 18], "chosen_ids": [23, 1], "rejected_ids": [32, 33, 34, 35, 36, 1]},
    {"prompt_ids": [2, 19], "chosen_ids": [24, 25, 26, 27, 28, 29, 40, 1], "rejected_ids": [37, 38, 1]},
]
BETA = 0.1
LOSS_CONFIGS = {
    "sigmoid": dict(loss_type=["sigmoid"]),
    "ipo": dict(loss_type=["ipo"]),
    "hinge": dict(loss_type=["hinge"]),
    "robust": dict(loss_type=["robust"], label_smoothing=0.1),
    "sigmoid_label_smoothing": dict(loss_type=["sigmoid"], label_smoothing=0.1),
    "sigmoid_sft": dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.3]),
}


def make_model(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        **{k: v for k, v in MODEL.items() if k != "rope_theta"},
        rope_parameters={"rope_type": "default", "rope_theta": MODEL["rope_theta"]},
    )
    return LlamaForCausalLM(config).float().eval()


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": PAD_ID, "</s>": EOS_ID, "<s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>")


def run_config(policy, reference, tokenizer, loss_kwargs: dict, out_dir: str) -> dict:
    args = DPOConfig(
        output_dir=out_dir,
        report_to=[],
        use_cpu=True,
        beta=BETA,
        bf16=False,
        fp16=False,
        per_device_train_batch_size=len(EXAMPLES),
        max_length=None,
        **loss_kwargs,
    )
    # The trainer needs a dataset to be constructed; the numbers come from the pre-tokenized batch below.
    stand_in = Dataset.from_dict({"prompt": ["w3 w4"], "chosen": ["w5"], "rejected": ["w6"]})
    trainer = DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=stand_in, processing_class=tokenizer
    )
    inputs = DataCollatorForPreference(pad_token_id=PAD_ID)(EXAMPLES)
    trainer.model.train()  # `_compute_loss` logs under "train" when the model is in training mode
    with torch.no_grad():
        policy_chosen, policy_rejected = trainer.compute_ref_log_probs(trainer.model, inputs)
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, inputs)
        loss = trainer.compute_loss(trainer.model, inputs)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return {
        "loss": float(loss),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "policy_logps": [[float(c), float(r)] for c, r in zip(policy_chosen, policy_rejected)],
        "ref_logps": [[float(c), float(r)] for c, r in zip(ref_chosen, ref_rejected)],
        "trl_args": {"beta": BETA, **loss_kwargs},
    }


def main() -> None:
    policy, reference = make_model(0), make_model(1)
    tensors = {f"policy.{k}": v.detach().contiguous() for k, v in policy.state_dict().items()}
    tensors |= {f"reference.{k}": v.detach().contiguous() for k, v in reference.state_dict().items()}
    save_file(tensors, str(HERE / "trl_tiny_llama.safetensors"))
    tokenizer = make_tokenizer()
    results = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for name, loss_kwargs in LOSS_CONFIGS.items():
            results[name] = run_config(policy, reference, tokenizer, loss_kwargs, out_dir)
    import transformers
    import trl

    golden = {
        "generated_by": "tests/assets/make_trl_goldens.py",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "model": MODEL,
        "examples": EXAMPLES,
        "results": results,
    }
    path = HERE / "trl_goldens.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(golden, indent=1) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path} and {HERE / 'trl_tiny_llama.safetensors'}")


if __name__ == "__main__":
    main()
