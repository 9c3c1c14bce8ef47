"""Weight and checkpoint formats: HF folders (`hf`, `hf_config`, `hf_table`, `hf_export`, `safetensors_writer`),
params checkpoints (`params`), GGUF import (`gguf`) and the trainer's Orbax step checkpoints (`checkpoints`,
`orbax_noise`). Only safetensors, Orbax and GGUF are read; pickle-based formats are refused.

May import: `model`, `runtime`, `config`.
"""
