"""Planning: compile the real train step on abstract shapes for a mesh and report per-device memory and FLOPs
(`planning`, `dtypes` for the precision summary, `flops` for the FLOP counts, `target_mesh` for the mesh planned);
and measuring it on the chip at hand (`step_timing`, `kernel_check`, `doctor`: `rpo-jax doctor`, `rpo-jax bench`).

May import: `train`, `objective`, `model`, `runtime`, `config`.
"""
