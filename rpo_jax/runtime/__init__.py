"""Runtime: the device mesh and shardings (`sharding`; across TPU slices, `multislice`), multi-process start-up
(`distributed`, `rendezvous`), stop signals agreed between hosts (`preemption`), fake CPU devices (`cpu_devices`),
host-memory settings (`host_memory`) and the one-line out-of-memory message (`out_of_memory`).

May import: `config`.
"""
