"""Generation from evaluation prompts: chunked, resumable, one fixed seed per image.

Images are saved as ``{case_number}_{i}.png`` (ESD's naming). A killed run continues where it
stopped: finished images are skipped, and each image's seed depends only on its prompt row and
index, so a resumed run gives the same images as an uninterrupted one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image
from tqdm import tqdm

from benchmark.prompts import Prompt

#: (prompts, negative prompts, seeds) -> images; any pipeline or method can be wrapped as one.
GenerateFn = Callable[[Sequence[str], Sequence[str], Sequence[int]], list[Image.Image]]


@dataclass(frozen=True)
class GenerationSettings:
    steps: int = 25
    guidance_scale: float = 7.5
    image_size: int = 64
    images_per_prompt: int = 1
    chunk_size: int = 16


def image_name(prompt: Prompt, i: int) -> str:
    return f"{prompt.case_number}_{i}.png"


def image_seed(prompt: Prompt, i: int) -> int:
    return prompt.evaluation_seed * 1000 + i


def generate_images(
    generate: GenerateFn,
    prompts: Sequence[Prompt],
    out_dir: Path,
    negative_prompt: str = "",
    settings: GenerationSettings = GenerationSettings(),
    progress: bool = True,
    desc: str = "generate",
) -> list[Path]:
    """Generate every missing image; return the paths of all images, in prompt order.

    Batches are always the same fixed chunks of the full list, and a chunk with any image missing
    is generated whole: batched float arithmetic then matches an uninterrupted run exactly.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = [(p, i) for p in prompts for i in range(settings.images_per_prompt)]
    chunks = [items[s : s + settings.chunk_size] for s in range(0, len(items), settings.chunk_size)]
    todo = [c for c in chunks if not all((out_dir / image_name(p, i)).exists() for p, i in c)]
    with tqdm(total=sum(len(c) for c in todo), unit="img", disable=not progress, desc=desc) as bar:
        for chunk in todo:
            images = generate(
                [p.prompt for p, _ in chunk], [negative_prompt] * len(chunk), [image_seed(p, i) for p, i in chunk]
            )
            for (p, i), image in zip(chunk, images, strict=True):
                _save_atomic(image, out_dir / image_name(p, i))
            bar.update(len(chunk))
    return [out_dir / image_name(p, i) for p, i in items]


def diffusers_generate_fn(pipeline, settings: GenerationSettings, **call_kwargs) -> GenerateFn:
    """Wrap a diffusers text-to-image pipeline; each image gets its own seeded CPU generator."""
    import torch

    def generate(prompts: Sequence[str], negatives: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        with torch.no_grad():
            result = pipeline(
                prompt=list(prompts),
                negative_prompt=list(negatives) if any(negatives) else None,
                generator=generators,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                height=settings.image_size,
                width=settings.image_size,
                output_type="pil",
                **call_kwargs,
            )
        return list(result.images)

    return generate


def _save_atomic(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
