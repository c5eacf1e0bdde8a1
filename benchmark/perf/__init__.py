"""Probes that print measured figures (``python -m benchmark.perf.<probe>``): speed, memory, interval
coverage, and the paper track's plumbing on a CPU or one GPU."""
