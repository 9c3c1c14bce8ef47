"""rpo-jax: RPO, IOPO and DPO preference optimization for Llama models in JAX."""

__version__ = "0.1.0"
