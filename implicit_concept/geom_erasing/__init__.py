"""Geom-Erasing's pieces: location tokens (where a concept is, in words), re-weighted loss (learn
less where it is), the switches that turn a training sample into its caption and weight map, and the
degraded boxes of its robustness ablation."""
