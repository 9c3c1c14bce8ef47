"""Configuration: the typed dataclasses of a run (`schema`), reading them from YAML and `--set` (`loading`), and
the range and path checks every value passes when it is read (`rules`).

May import: no other wing of `rpo_jax` (only `data_pipeline.files` / `data_pipeline.errors`).
"""
