"""Preference pairs: the pair schema, input readers, recipes and the `build-pairs` command.

`schema` (PairRecord and friends), `instructions` and `constraint_specs` (the pool recipes' inputs: constraints and
where they are stated), `readers` (instructions, responses, pair files), the pool recipes (`pool`,
`pool_builder`, `rpo`, `iopo`, `dpo`), `imports` (TRL / sharegpt / hh-rlhf / IOPO files), `stats`, `build` (one
build from `BuildSettings`), `cli`, and `synthesis` / `synthesis_conversations` (`build-instructions`). May import
`data_pipeline.constraints`, `files` and `errors`; never `records` or anything that needs JAX.
"""
