"""The training objective: paired per-sequence log-prob sums and token counts `[B, G]` from a model
(`logps`, `packed_logps` for packed rows) and the losses as pure functions of them (`losses`, one small function
per method, each citing its equation in docs/algorithms.md).

May import: `model`, `runtime`, `config`.
"""
