"""Speed probes that print figures measured side by side in one run (``python -m benchmark.perf.<probe>``)."""
