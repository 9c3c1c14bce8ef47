"""Planning: compile the real train step on abstract shapes for a mesh and report per-device memory and FLOPs
(`planning`, `dtypes` for the precision summary, `flops` for the FLOP counts, `target_mesh` for the mesh planned).

May import: `train`, `objective`, `model`, `runtime`, `config`.
"""
