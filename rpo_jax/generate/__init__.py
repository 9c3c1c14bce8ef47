"""Generation: the KV-cache sampler (`sampler`, with `cached_forward` and `token_choice`), batch generation of
responses to prompts (`generation`; its prompts file and turn-by-turn order: `prompt_rows`) and the
OpenAI-compatible chat server on it (`serving`: uvicorn + Starlette,
`serving_app`, `serving_http`, `serving_security`, `serving_protocol`, in front of `serving_batcher`,
`serving_engine` and `serving_text`).

May import: `model`, `io`, `runtime`, `config`.
"""
