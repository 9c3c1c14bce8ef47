"""Experiments that compose both packages end to end (`rpo-jax experiment`): build instructions, self-sample,
build pairs, train one model per method, evaluate, report. Stages are cached by content hash and resumable.

Like `rpo_jax/commands`, this package may use the public functions of both `data_pipeline` and `rpo_jax`.
"""
