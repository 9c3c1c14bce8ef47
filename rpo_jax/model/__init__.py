"""The model: a Flax NNX Llama (`llama`) with its attention implementations (`attention`, `blockwise_attention`,
`attention_kernels` for Pallas/cuDNN) and rematerialisation policies (`remat`).

May import: `runtime`, `config`.
"""
