"""What a pipeline a method hands over in memory must hold to draw what it means, checked before
its first image: weights with no NaN or infinity (a closed-form edit that inverted a singular
matrix draws black images, which the detector finds nothing in: a perfect erasure score), and a
text encoder that can embed every token its tokenizer gives (tokens added, embeddings not resized:
an ``IndexError`` deep inside CLIP, or nothing said when no prompt names the token); and, while it
samples, finite outputs of its UNet and VAE (NaN from finite weights: a float16 overflow)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from benchmark.models.pipeline_identity import held_parts
from implicit_concept.tensor_checks import all_finite, non_finite

#: The tokenizer and text encoder attributes that go together (SDXL and SD3 carry a second and third).
_TEXT_PAIRS = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3"))


def pipeline_problem(pipeline: Any) -> str | None:
    """Why ``pipeline`` cannot be sampled as it is, in words naming the part, or None. A plug-in's own
    object (a wrapper, a function closing over a pipeline) is checked through what it holds."""
    parts = dict(held_parts(pipeline))
    for path, part in parts.items():
        if isinstance(part, torch.nn.Module):
            tensors = ((name, t) for name, t in part.state_dict().items() if not t.is_meta)
        elif isinstance(part, torch.Tensor):
            tensors = iter([("", part)] if not part.is_meta else [])
        else:
            continue
        bad = non_finite(tensors)
        if bad is not None:
            where = f"{path}.{bad}" if bad else path
            return f"its {path} holds NaN or infinite values ({where}): it would draw blank images, scored as a perfect erasure"
    for path, tokenizer in parts.items():
        owner, _, name = path.rpartition(".")
        encoder_name = dict(_TEXT_PAIRS).get(name)
        prefix = f"{owner}." if owner else ""
        encoder = parts.get(prefix + encoder_name) if encoder_name else None
        embeddings = getattr(encoder, "get_input_embeddings", None)
        if not callable(embeddings) or not hasattr(tokenizer, "__len__"):
            continue
        rows = getattr(embeddings(), "num_embeddings", None)
        if isinstance(rows, int) and len(tokenizer) > rows:
            return (f"its {path} holds {len(tokenizer)} tokens but its {prefix}{encoder_name} embeds {rows}: tokens added "
                    f"to a tokenizer need rows of their own ({encoder_name}.resize_token_embeddings(len({name})), then set them)")
    return None


class NonFiniteOutput(ValueError):
    """A pipeline's UNet or VAE gave NaN or infinity while sampling."""


@contextmanager
def finite_outputs(pipeline: Any) -> Iterator[None]:
    """While the block samples ``pipeline``, its UNet's and VAE's outputs (the VAE's own and its
    direct children's, as ``decode`` calls them) must be finite: a float16 overflow or a guidance
    that divides by zero drew NaN latents, which become black images read as a perfect erasure.
    Raises :class:`NonFiniteOutput` naming the part at its first such output."""
    handles = []

    def check(name: str) -> Callable[..., None]:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            tensor = getattr(output, "sample", output[0] if isinstance(output, tuple) and output else output)
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not tensor.is_meta and not all_finite(tensor):
                raise NonFiniteOutput(f"its {name} gave NaN or infinite values while sampling ({tensor.dtype}: a float16 "
                                      "overflow, or a division by zero in its guidance); its images would be blank, scored as "
                                      "a perfect erasure")
        return hook

    for path, part in held_parts(pipeline):
        top = path.rsplit(".", 1)[-1]
        if isinstance(part, torch.nn.Module) and top in ("unet", "vae"):
            watched = [(path, part)] + ([(f"{path}.{n}", child) for n, child in part.named_children()] if top == "vae" else [])
            handles += [module.register_forward_hook(check(name)) for name, module in watched]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
