"""Weight and checkpoint I/O: HF folders (`hf`, `hf_config`, `safetensors_writer`), params checkpoints
(`params`), GGUF import (`gguf`) and the trainer's step checkpoints (`checkpoints`). Only safetensors, Orbax and
GGUF are read; pickle-based formats are refused."""
