"""One module per `rpo-jax` subcommand (see `rpo_jax.cli.COMMANDS`): each parses its flags and calls the library.

Commands are where the two packages meet: they may call any public function of `data_pipeline` (e.g. the
IFEval scorer after generating responses) while the library itself reads data only through
`data_pipeline.records`. No command imports another command.
"""
