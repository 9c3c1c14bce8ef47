"""Generation: the KV-cache sampler (`sampler`), batch generation of responses to prompts (`generation`) and the
OpenAI-compatible chat server on it (`serving`, `serving_protocol`).

May import: `model`, `io`, `runtime`, `config`.
"""
