"""The benchmark: tracks, models, training, methods, generation, evaluation and the report, wired
together by the protocol; ``benchmark.cli`` is the command line (the composition root)."""
