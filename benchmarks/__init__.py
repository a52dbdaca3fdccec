"""Benchmarks of mvsim: efficiency against the machine, seed batching, time to verdict,
scaling and the NTK kernel. Not part of the installed package: run from a checkout with
``python -m benchmarks.run`` (or ``mvsim bench``), or ``benchmarks/gpu.sh`` on a GPU."""
