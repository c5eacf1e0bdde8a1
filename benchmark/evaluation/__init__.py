"""What is measured on generated images besides ICR: scene-FID and prompt following (CPU tracks,
with a small CNN trained on procedural scenes), Inception FID and CLIP score (paper track); and on
held-out contaminated images, the denoising error inside and outside the concept's boxes (``box_error``)."""
