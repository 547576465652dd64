"""Benchmark suite: ppl_vae against hand-written PyTorch and plain Pyro (``python -m benchmarks``)."""
