"""Generation from evaluation prompts: chunked, resumable, one fixed seed per image.

Images are saved as ``{case_number}_{i}.png`` (ESD's naming). A killed run continues where it
stopped: finished images are skipped, and each image's seed depends only on its prompt row and
index, so a resumed run gives the same images as an uninterrupted one. Images record what made
them (``source.json``: the model's weights by content, the negative prompt, the settings, and each
image's prompt text and seed); made by another model, prompt or setting, they are stale and made anew.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from benchmark.failures import plugin_failure
from benchmark.models.pipeline_checks import NonFiniteOutput, finite_outputs
from benchmark.models.pipeline_identity import held_parts, json_sha256
from benchmark.plugin_state import kept_plugin_state, seeded_rngs
from benchmark.prompts import Prompt
from implicit_concept.files import atomic_save_image, atomic_write_json
from implicit_concept.image_decode import open_image
from implicit_concept.json_records import read_json_object_or_none
from implicit_concept.progress import progress_bar
from implicit_concept.provenance import canonical_json, package_versions
from implicit_concept.sample_error import SampleError
from implicit_concept.shard_reader import is_hidden
from implicit_concept.torch_settings import MAX_THREADS, torch_threads
from implicit_concept.validate import check_int, check_number

SOURCE_FILE = "source.json"
#: The packages an image's pixels depend on besides the model and settings: images drawn under other
#: versions are drawn anew, not kept beside new ones in one set scored as one model's.
SAMPLING_PACKAGES = ("implicit-concept", "torch", "diffusers", "transformers", "numpy", "pillow")
#: Image ``i`` of a prompt is seeded ``evaluation_seed * 1000 + i`` (:func:`image_seed`): from 1000
#: images per prompt on, a prompt's images would be drawn from the next seed's prompt's noise.
MAX_IMAGES_PER_PROMPT = 1000

#: (prompts, negative prompts, seeds) -> images; any pipeline or method can be wrapped as one.
GenerateFn = Callable[[Sequence[str], Sequence[str], Sequence[int]], list[Image.Image]]


@dataclass(frozen=True)
class GenerationSettings:
    steps: int = 25
    guidance_scale: float = 7.5
    image_size: int = 64
    images_per_prompt: int = 1
    chunk_size: int = 16
    #: Torch threads sampling runs under (None: as the process is). Sampling arithmetic can depend
    #: on the thread count (a debug model's images differed by a pixel level between 1 and 2), so a
    #: track's images are made under one count wherever they are made.
    threads: int | None = None

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_number("guidance_scale", self.guidance_scale, 0, 100)
        check_int("image_size", self.image_size, 8)
        check_int("images_per_prompt", self.images_per_prompt, 1, MAX_IMAGES_PER_PROMPT)
        check_int("chunk_size", self.chunk_size, 1)
        if self.threads is not None:
            check_int("threads", self.threads, 1, MAX_THREADS)


def image_name(prompt: Prompt, i: int) -> str:
    return f"{prompt.case_number}_{i}.png"


def image_prompts(prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Prompt]:
    """The prompt of each image :func:`generate_images` returns, in its order: what scores that pair
    an image with its prompt (prompt following) must be given."""
    return [p for p in prompts for _ in range(settings.images_per_prompt)]


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
    source: dict[str, Any] | None = None,
) -> list[Path]:
    """Generate every missing image (or one no longer an image of the asked size); return the paths of all
    images, in prompt order.

    Batches are always the same fixed chunks of the full list, and a chunk with any image missing
    is generated whole: batched float arithmetic then matches an uninterrupted run exactly.
    ``source`` names the model (e.g. where its weights were loaded from); images in ``out_dir``
    made by another source, negative prompt or settings, or under other package versions
    (:data:`SAMPLING_PACKAGES`), are removed first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = [(p, i) for p in prompts for i in range(settings.images_per_prompt)]
    if source is not None:
        _claim(out_dir, {"model": source, "negative_prompt": negative_prompt, "settings": asdict(settings),
                         "packages": package_versions(SAMPLING_PACKAGES)},
               {image_name(p, i): _drawn_from(p, i) for p, i in items})
    chunks = [items[s : s + settings.chunk_size] for s in range(0, len(items), settings.chunk_size)]
    todo = [c for c in chunks if not all(_kept(out_dir / image_name(p, i), settings.image_size) for p, i in c)]
    with progress_bar(total=sum(len(c) for c in todo), unit="img", progress=progress, desc=desc) as bar:
        for chunk in todo:
            try:
                with torch_threads(settings.threads):
                    images = generate(
                        [p.prompt for p, _ in chunk], [negative_prompt] * len(chunk), [image_seed(p, i) for p, i in chunk]
                    )
            except GenerationError as e:
                raise GenerationError(str(e) if str(e).startswith(f"{desc}: ") else f"{desc}: {e}") from None
            except NonFiniteOutput as e:
                raise GenerationError(f"{desc}: the pipeline cannot be sampled: {e}") from None
            except BaseException as e:
                from benchmark.methods.interface import NotImplementedMethod

                if isinstance(e, NotImplementedMethod):
                    raise  # a method not carried yet, said while sampling: missing, as from build
                raise plugin_failure(desc, "the pipeline", e) from e
            _check_images(images, len(chunk), settings.image_size, desc)
            images = [_pixels(image, desc) for image in images]
            for (p, i), image in zip(chunk, images):
                atomic_save_image(image, out_dir / image_name(p, i))
            bar.update(len(chunk))
    return [out_dir / image_name(p, i) for p, i in items]


def _kept(path: Path, size: int) -> bool:
    """Whether an image drawn earlier is there to keep: a regular file whose header reads as a
    ``size`` square image. One replaced or damaged since (another size, emptied, text) is drawn anew,
    as the record beside it says it was drawn: kept, it was scored as the model's image."""
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f, open_image(f) as image:
            return image.size == (size, size)
    except (OSError, ValueError, SampleError):
        return False


class GenerationError(ValueError):
    """A pipeline returned something other than one image of the asked size per prompt."""


def _check_images(images: Any, asked: int, size: int, desc: str) -> None:
    """Refuse, naming what was generating, what no image file should be made from: a plug-in's
    pipeline that drops prompts, returns arrays or tensors, or ignores the track's image size."""
    if not isinstance(images, (list, tuple)):
        raise GenerationError(f"{desc}: the pipeline returned {type(images).__name__}, not a list of PIL images")
    if len(images) != asked:
        raise GenerationError(f"{desc}: the pipeline returned {len(images)} images for {asked} prompts")
    for image in images:
        if not isinstance(image, Image.Image):
            raise GenerationError(f"{desc}: the pipeline returned a {type(image).__name__}, not a PIL image (output_type='pil')")
        if image.size != (size, size):
            raise GenerationError(f"{desc}: the pipeline returned {image.width}x{image.height} images; the track asks for {size}x{size}")
        if image.mode != "RGB":
            raise GenerationError(f"{desc}: the pipeline returned mode {image.mode} images; the benchmark saves and scores RGB "
                                  "(what a transparent or high-bit-depth image means is the method's to say: convert it to RGB)")


def _pixels(image: Image.Image, desc: str) -> Image.Image:
    """``image``'s pixels alone, in a new RGB image: what is saved and scored. What its ``info``
    carries besides is saved with them and would change them when read back: an RGB image's
    ``transparency`` (what ``convert("RGB")`` keeps of a transparent palette image) is written as
    PNG's tRNS, and that colour is scored as white. An image whose pixels were never read
    (``Image.open`` of a file since closed, or cut short) is refused naming the method, before any
    image of its chunk is saved."""
    try:
        return Image.frombytes("RGB", image.size, image.tobytes())
    except Exception as e:
        raise GenerationError(f"{desc}: the pipeline returned an image whose pixels cannot be read ({type(e).__name__}: {e})") from None


def _drawn_from(prompt: Prompt, i: int) -> str:
    """What one image is drawn from besides the model and settings: its prompt's text and its seed."""
    return json_sha256({"prompt": prompt.prompt, "seed": image_seed(prompt, i)})


def _claim(out_dir: Path, record: dict[str, Any], images: dict[str, str]) -> None:
    """Record what the images in ``out_dir`` are drawn from: the model, negative prompt and settings
    for all of them, and each image's own prompt text and seed (``images``). An image made by another
    model or setting, or from another prompt under the same name (a prompts file edited in place),
    is removed so that it is drawn anew; so is any image the record does not account for."""
    record = json.loads(canonical_json(record))
    path = out_dir / SOURCE_FILE
    old = read_json_object_or_none(path)  # bounded, from a regular file: a FIFO of that name hung drawing
    pngs = sorted(p.name for p in out_dir.glob("*.png") if not is_hidden(p.name))
    # Every image drawn here is in the record before it is drawn: one it does not list (a lab's own,
    # under score-pipeline's --out, copied in before or after a first draw) is never replaced, and
    # nor is one beside a source.json drawing did not write (damaged, or another tool's file).
    foreign = _not_ours(path, old)
    if foreign and not pngs:
        raise ValueError(f"{path}: not the record drawing writes ({foreign}), which drawing would replace; "
                         "move it away or choose another output folder")
    listed = old.get("images") if isinstance(old, dict) else None
    theirs = [name for name in pngs if foreign or not os.path.lexists(path) or (listed is not None and name not in listed)]
    if theirs:
        why = (f"the {SOURCE_FILE} beside them is not drawing's record: {foreign}" if foreign
               else f"no {SOURCE_FILE} beside them" if not os.path.lexists(path) else f"not listed in its {SOURCE_FILE}")
        raise ValueError(f"{out_dir}: holds {len(theirs)} PNG images not drawn here ({why}, e.g. "
                         f"{theirs[0]}), which drawing would replace; move them away or choose another output folder")
    same_model = isinstance(listed, dict) and {k: v for k, v in old.items() if k != "images"} == record
    drawn = dict(listed) if same_model else {}
    for name, key in images.items():
        if drawn.get(name) != key:
            (out_dir / name).unlink(missing_ok=True)
            drawn[name] = key
    for stale in out_dir.glob("*.png"):
        if stale.name not in drawn and not is_hidden(stale.name):
            stale.unlink()
    if old != {**record, "images": drawn}:
        atomic_write_json(path, {**record, "images": drawn})


#: What a source.json drawing wrote holds: these, (from when each image was keyed) ``images`` and
#: (from when versions were recorded: one without them is stale, drawn anew) ``packages``.
_RECORD_FIELDS = {"model", "negative_prompt", "settings"}


def _not_ours(path: Path, old: Any) -> str | None:
    """Why ``path`` is not a record drawing wrote (so the PNGs beside it are not known to be drawn
    here), or None: absent, or a record drawing wrote (stale or not; one from before images were
    keyed one by one holds no ``images``). Drawing writes it whole (renamed into place), so a
    damaged one is not drawing's, nor is a link (to a record elsewhere: replacing it lost the link)."""
    if not os.path.lexists(path):
        return None
    if path.is_symlink():
        return "a symbolic link"
    if not isinstance(old, dict):
        return "not a JSON object"
    if set(old) - {"images", "packages"} != _RECORD_FIELDS or not isinstance(old.get("images", {}), dict):
        return f"fields {', '.join(sorted(old))}, where drawing writes {', '.join(sorted(_RECORD_FIELDS | {'images', 'packages'}))}"
    return None


def _refuse_safety_checked(result: Any, watched: list[Any]) -> None:
    """A safety checker a method's pipeline carries replaces what it flags with black images, which
    the detector finds nothing in: scored, they would be a perfect erasure. Its flags are a diffusers
    output's ``nsfw_content_detected``, or the second item of its ``return_dict=False`` tuple, or
    (a wrapper returning ``.images`` alone) what a checker it holds gave (``watched``)."""
    told = _flags(result[1] if isinstance(result, tuple) and len(result) > 1 else getattr(result, "nsfw_content_detected", None))
    flagged, count = max(((sum(1 for f in flags if isinstance(f, (bool, np.bool_)) and f), len(flags)) for flags in (told or [], watched)))
    if flagged:
        raise GenerationError(f"the pipeline's safety checker replaced {flagged} of {count} images with black ones, "
                              "which the detector would read as erased; sample without it (pipeline.safety_checker = None)")


@contextlib.contextmanager
def _watched_safety_checkers(pipeline: Any) -> Iterator[list[Any]]:
    """The flags every safety checker module ``pipeline`` holds gives while the block samples it (held
    as a part named ``safety_checker``, at any depth: in a wrapper or a closure that returns only the
    images, whose flags no output shows)."""
    flags: list[Any] = []

    def hook(module: Any, inputs: Any, output: Any) -> None:
        flags.extend((_flags(output[1]) or []) if isinstance(output, tuple) and len(output) > 1 else [])

    handles = [part.register_forward_hook(hook) for path, part in held_parts(pipeline)
               if isinstance(part, torch.nn.Module) and path.rsplit(".", 1)[-1] == "safety_checker"]
    try:
        yield flags
    finally:
        for handle in handles:
            handle.remove()


def _flags(flags: Any) -> list[Any] | None:
    """A safety checker's flags as a list, whether given as diffusers' checker gives them (a list of
    bools) or as an array or tensor of bools (its ``forward_onnx``'s, a lab's own checker's), or a
    list of one-element ones; None: no flags."""
    if isinstance(flags, torch.Tensor):
        flags = flags.detach().cpu().numpy() if flags.dtype == torch.bool else None
    if isinstance(flags, np.ndarray):
        flags = list(flags.reshape(-1)) if flags.dtype == np.bool_ else None
    if not isinstance(flags, (list, tuple)):
        return None
    return [_flag(f) for f in flags]


def _flag(flag: Any) -> Any:
    """One flag: a one-element bool tensor or array as its bool, anything else as it is."""
    if isinstance(flag, torch.Tensor) and flag.dtype == torch.bool:
        flag = flag.detach().cpu().numpy()
    if isinstance(flag, np.ndarray) and flag.dtype == np.bool_ and flag.size == 1:
        return bool(flag.reshape(()))
    return flag


def diffusers_generate_fn(pipeline, settings: GenerationSettings, **call_kwargs) -> GenerateFn:
    """Wrap a diffusers text-to-image pipeline; each image gets its own seeded CPU generator."""
    def generate(prompts: Sequence[str], negatives: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        # A plug-in's pipeline may chdir (images are saved after), set warnings filters or draw from the
        # global generators: seeded by the chunk's image seeds, as the chunks are the same on a resume.
        with torch.no_grad(), kept_plugin_state(), seeded_rngs("sample", *seeds), finite_outputs(pipeline), \
                _watched_safety_checkers(pipeline) as watched:
            result = pipeline(**_call_arguments(prompts, negatives, generators, settings), **call_kwargs)
        # A diffusers output's .images, or its return_dict=False tuple (images, ...); a plain
        # function may return the list of images itself.
        _refuse_safety_checked(result, watched)
        if isinstance(result, tuple) and result and isinstance(result[0], (list, tuple)):
            result = result[0]
        images = result if isinstance(result, (list, tuple)) else getattr(result, "images", None)
        if images is None:
            raise GenerationError(f"{type(pipeline).__name__} returned a {type(result).__name__} with no .images, not a diffusers pipeline output")
        return list(images)

    return generate


def _call_arguments(prompts: Sequence[str], negatives: Sequence[str], generators: list[Any],
                    settings: GenerationSettings) -> dict[str, Any]:
    """What a method's pipeline is called with besides its ``call_kwargs``: a diffusers pipeline's names."""
    return dict(prompt=list(prompts), negative_prompt=list(negatives) if any(negatives) else None, generator=generators,
                num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale, height=settings.image_size,
                width=settings.image_size, output_type="pil")


def call_problem(pipeline: Any, settings: GenerationSettings, call_kwargs: dict[str, Any]) -> str | None:
    """Why ``pipeline`` cannot be called as :func:`diffusers_generate_fn` calls it (a lab's own pipeline
    class whose ``__call__`` takes no ``height`` or ``output_type``), or None: refused in one line
    before its first image, not a TypeError traceback from inside the sampling loop."""
    try:
        signature = inspect.signature(pipeline)
    except (TypeError, ValueError):
        return None  # no signature to check (a builtin): calling it tells
    arguments = _call_arguments([""], ["a"], [None], settings)
    try:
        signature.bind(**arguments, **call_kwargs)
    except TypeError as e:
        named = getattr(pipeline, "__qualname__", None) or type(pipeline).__name__
        return (f"calling it as {named}{signature} with {', '.join(arguments)}"
                f"{', ' if call_kwargs else ''}{', '.join(call_kwargs)} fails ({e}); the benchmark calls every method's "
                "pipeline with a diffusers pipeline's arguments: take them (or **kwargs)")
    return None
