"""What is measured on generated images besides ICR: scene-FID and prompt following (CPU tracks,
with a small CNN trained on procedural scenes), Inception FID and CLIP score (paper track)."""
