"""CLIP's tokenizer with no download: built from the BPE vocabulary that open_clip ships in its wheel.

open_clip's ``bpe_simple_vocab_16e6.txt.gz`` holds the merges of OpenAI's CLIP tokenizer. Converted
to ``vocab.json`` + ``merges.txt`` it gives a ``transformers.CLIPTokenizer`` whose ids equal
open_clip's ``SimpleTokenizer`` (checked on ASCII, punctuation and accented text; in transformers 5
``CLIPTokenizer`` is the ``tokenizers``-backed class and ``CLIPTokenizerFast`` an alias of it).
``model_max_length=77`` is set explicitly: without it the pipeline's text encoder overflows.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import CLIPTokenizer

from implicit_concept.files import atomic_write_text
from implicit_concept.geom_erasing.location_tokens import CLIP_MAX_LENGTH

if TYPE_CHECKING:
    import torch

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2


def bundled_bpe_path() -> Path:
    """Where open_clip's wheel keeps the BPE file, found without importing open_clip (slow, needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("open_clip_torch is not installed: it ships the CLIP BPE vocabulary")
    path = Path(spec.origin).parent / BPE_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CLIP BPE vocabulary missing from open_clip's install")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_vocab_files(directory: str | Path) -> tuple[Path, Path]:
    """Convert the gzipped BPE merges into ``vocab.json`` and ``merges.txt`` (written atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    if vocab_file.is_file() and merges_file.is_file():
        return vocab_file, merges_file
    lines = gzip.open(bundled_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    atomic_write_text(vocab_file, json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    atomic_write_text(merges_file, "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_file, merges_file


def build_clip_tokenizer(cache_dir: str | Path) -> CLIPTokenizer:
    """CLIP's tokenizer, its vocabulary files cached under ``cache_dir``."""
    vocab_file, merges_file = write_vocab_files(cache_dir)
    return CLIPTokenizer(
        str(vocab_file),
        str(merges_file),
        model_max_length=CLIP_MAX_LENGTH,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def token_ids(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """``texts`` as a batch of token ids, each padded or truncated to the tokenizer's ``model_max_length``."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
