"""Training: the jitted train and eval steps (`step`), the loop (`trainer`), each step's metrics record and the
checks it must pass (`step_record`), and everything a run owns: policy and reference (`policy`), optimizer
(`optim`), batches from `data_pipeline.records` (`batches`, `batch_checks`), precomputed reference log-probs
(`precompute`), held-out evaluation (`evaluation`), resume and pre-flight checks (`resume`, `preflight`), the run's
data and folder (`run_data`, `run_dir`), its log, report and summary (`run_log`, `run_summary`) and export of a
run's checkpoint as an HF folder (`checkpoint_export`, `hf_chat_files`).

May import: `objective`, `io`, `model`, `runtime`, `config`, and `data_pipeline.records` (the only way the library
reads data).
"""
