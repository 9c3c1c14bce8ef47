"""One module per `rpo-jax` subcommand (see `rpo_jax.cli.COMMANDS`)."""
