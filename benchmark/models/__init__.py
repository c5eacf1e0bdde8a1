"""Stable-Diffusion-shaped models: the tiny pipeline built from configs, its parameter-free
autoencoder and download-free CLIP tokenizer, the embedded base model, and loading of local SD dirs."""
