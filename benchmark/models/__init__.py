"""Stable-Diffusion-shaped models: the tiny pipeline built from configs, its parameter-free
autoencoder and download-free CLIP tokenizer, the embedded base model, SD v1.5's architecture, and
loading of local SD dirs with the checks around it (what a pipeline is by content, adapter weights,
``--pretrained`` folders, pipelines in memory, sealed shared folders)."""
