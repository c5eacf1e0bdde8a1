"""What a pipeline a method hands over in memory must hold to draw what it means, checked before
its first image: weights with no NaN or infinity (a closed-form edit that inverted a singular
matrix draws black images, which the detector finds nothing in: a perfect erasure score), and a
text encoder that can embed every token its tokenizer gives (tokens added, embeddings not resized:
an ``IndexError`` deep inside CLIP, or nothing said when no prompt names the token)."""
from __future__ import annotations

from typing import Any

import torch

from benchmark.models.pipeline_identity import held_parts
from implicit_concept.tensor_checks import non_finite

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
