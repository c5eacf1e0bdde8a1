"""Weights a pipeline folder holds that change what it draws only once applied: a LoRA, textual-inversion
embeddings, custom-diffusion or IP-Adapter weights, a PEFT adapter.

``load_pipeline`` reads each part's own weights and applies none of these, so a folder holding them
(``pipe.save_lora_weights(folder)`` beside ``save_pretrained``, ``unet.save_attn_procs``) would be
sampled, scored and fine-tuned as the model without them: an erasure scored as the plain model's,
said nowhere. They are found by diffusers' and PEFT's file names (a pickle is never opened) and, in
any other safetensors file, by their tensors' names, read from the header alone, in the folder and
in each folder directly below it.
"""
from __future__ import annotations

import re
from pathlib import Path

from safetensors import SafetensorError, safe_open

from benchmark.models.pipelines import PICKLED_SUFFIXES
from implicit_concept.shard_reader import is_hidden

#: diffusers' and PEFT's file names for them, before the suffix (and a variant).
ADAPTER_FILES = {"pytorch_lora_weights": "LoRA", "adapter_model": "PEFT adapter", "pytorch_custom_diffusion_weights": "custom-diffusion",
                 "learned_embeds": "textual-inversion", "ip_adapter": "IP-Adapter"}
#: Tensor names no part of a Stable Diffusion pipeline holds: diffusers', PEFT's, kohya's and LyCORIS's
#: (LoHa, LoKr) LoRA layers, custom diffusion's processors, IP-Adapter's projection, an embedding keyed by its token.
ADAPTER_TENSORS = ((re.compile(r"(?:^|[._])(?:lora|lycoris|hada|lokr)(?:[._]|$)", re.IGNORECASE), "LoRA"),
                   (re.compile(r"custom_diffusion"), "custom-diffusion"),
                   (re.compile(r"^(?:image_proj|ip_adapter)\."), "IP-Adapter"),
                   (re.compile(r"^(?:emb_params|string_to_param|string_to_token|<[^>]+>)$"), "textual-inversion"))
WEIGHT_SUFFIXES = (".safetensors", *PICKLED_SUFFIXES)


def adapter_weights(path: str | Path) -> list[tuple[Path, str, str]]:
    """Each adapter file in the pipeline folder ``path`` or a folder directly below it: the file, what
    it holds, and why that is known (its name, or a tensor's)."""
    path = Path(path)
    folders = [path, *sorted(p for p in path.iterdir() if p.is_dir() and not is_hidden(p.name))]
    found = []
    for folder in folders:
        try:
            files = sorted(folder.iterdir())
        except OSError:
            continue  # a folder no part is read from (a part's own loader names one it cannot read)
        for file in files:
            if is_hidden(file.name) or not file.name.endswith(WEIGHT_SUFFIXES) or not file.is_file():
                continue
            kind = ADAPTER_FILES.get(file.name.split(".")[0])
            if kind is not None:
                found.append((file, kind, "diffusers' name for them"))
            elif file.suffix == ".safetensors":
                said = _by_tensor_names(file)
                if said is not None:
                    found.append((file, *said))
    return found


def _by_tensor_names(file: Path) -> tuple[str, str] | None:
    """What an adapter's tensor names say a safetensors file holds; None for a model's weights, or a
    file that is not safetensors (no part reads it: its own loader names it when one does)."""
    try:
        with safe_open(str(file), "pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError):
        return None
    for key in keys:
        for pattern, kind in ADAPTER_TENSORS:
            if pattern.search(key):
                return kind, f"tensor {key!r}"
    return None


def check_no_adapter_weights(path: str | Path) -> None:
    """Refuse, naming the file, a pipeline folder holding weights that ``load_pipeline`` would not apply."""
    found = adapter_weights(path)
    if not found:
        return
    file, kind, why = found[0]
    more = f" (and {len(found) - 1} more such files)" if len(found) > 1 else ""
    raise ValueError(
        f"{file}: {kind} weights ({why}){more}, which loading the pipeline does not apply: it would be judged as the model "
        "without them. Apply them and save the whole pipeline (diffusers: pipe.load_lora_weights(...); pipe.fuse_lora(); "
        "pipe.unload_lora_weights(); pipe.save_pretrained(...)), or plug the method in (--method) and apply them in its build()"
    )
