"""Benchmarks: step time, throughput, MFU and memory, side by side with TRL."""
