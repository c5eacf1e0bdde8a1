"""Location tokens: boxes to bins, captions that fit CLIP's 77 tokens, tokens that survive a save."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import logging

import pytest
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from benchmark.models.clip_tokenizer import CLIP_MAX_LENGTH, build_clip_tokenizer
from implicit_concept.geom_erasing.location_tokens import (
    add_tokens,
    bins_for_box,
    count_tokens,
    geometric_caption,
    location_token,
    location_tokens,
    negative_prompt,
)
from implicit_concept.sample import Box


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"))


def test_tokenizer_gives_clips_ids(tokenizer):
    # ids from open_clip's SimpleTokenizer for the same text, start and end tokens added
    assert tokenizer("a red circle above a blue square on a green background").input_ids == [
        49406, 320, 736, 7117, 4348, 320, 1746, 3999, 525, 320, 1901, 5994, 49407]
    assert tokenizer("Hello, World! qrcode").input_ids == [49406, 3306, 267, 1002, 256, 80, 81, 3217, 49407]
    assert tokenizer.model_max_length == CLIP_MAX_LENGTH


def test_token_names_are_column_then_row():
    assert location_token(3, 0) == "<l3,0>"
    assert location_tokens(2) == ["<l0,0>", "<l1,0>", "<l0,1>", "<l1,1>"]


@pytest.mark.parametrize("grid", [0, 9, 2.0, True])
def test_grid_outside_1_to_8_is_refused(grid):
    with pytest.raises(ValueError, match="grid"):
        bins_for_box((0, 0, 4, 4), 64, 64, grid)


@pytest.mark.parametrize(
    "box, expected",
    [
        ((0, 0, 16, 16), [(0, 0)]),  # ends exactly on a bin edge: no spill
        ((0, 0, 17, 16), [(0, 0), (1, 0)]),  # one pixel over the edge
        ((48, 48, 64, 64), [(3, 3)]),  # bottom-right corner bin
        ((63, 0, 64, 1), [(3, 0)]),  # top-right corner pixel
        ((20, 20, 24, 24), [(1, 1)]),  # a sub-bin box
        ((15, 15, 17, 17), [(0, 0), (1, 0), (0, 1), (1, 1)]),  # a small box on a bin corner
        ((-5, -5, 70, 70), [(m, n) for n in range(4) for m in range(4)]),  # beyond the image: clipped
    ],
)
def test_bins_for_box_on_a_64px_image(box, expected):
    assert bins_for_box(box, 64, 64, 4) == expected


def test_whole_image_covers_every_bin_of_every_grid():
    for grid in range(1, 9):
        assert len(bins_for_box(Box(0, 0, 100, 60), 100, 60, grid)) == grid * grid


def test_bins_on_a_non_divisible_image():
    # 30 px in 4 bins: edges at 7.5, 15, 22.5; a box ending at 15 stays in bins 0-1.
    assert bins_for_box((0, 0, 15, 8), 30, 30, 4) == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert bins_for_box((8, 0, 15, 7), 30, 30, 4) == [(1, 0)]


def test_caption_gets_concept_and_bins(tokenizer):
    cap = geometric_caption("a red circle", [("qr code", [(0, 0), (1, 0)])], tokenizer)
    assert cap.text == "a red circle qr code <l0,0> <l1,0>"
    assert not cap.truncated


def test_long_caption_is_cut_never_the_tokens(tokenizer, caplog):
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    add_tokens(tokenizer, text_encoder, location_tokens(8))
    all_bins = [(m, n) for n in range(8) for m in range(8)]
    caption = " ".join(f"word{i}" for i in range(60))
    with caplog.at_level(logging.WARNING, logger="implicit_concept.geom_erasing.location_tokens"):
        cap = geometric_caption(caption, [("qr code", all_bins)], tokenizer)
    assert cap.truncated and cap.dropped_words[-1] == "word59"
    assert cap.text.endswith(" ".join(location_tokens(8)))
    assert count_tokens(tokenizer, cap.text) <= CLIP_MAX_LENGTH
    assert "dropped" in caplog.text
    assert count_tokens(tokenizer, negative_prompt(["qr code"], 8)) <= CLIP_MAX_LENGTH


def test_a_caption_that_fits_exactly_77_tokens_is_kept_whole(tokenizer):
    """The cut keeps the longest caption that fits: at exactly 77 tokens nothing is dropped, and one
    word more drops just that word."""
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    add_tokens(tokenizer, text_encoder, location_tokens(8))
    terms = [("qr code", [(m, n) for n in range(8) for m in range(8)])]
    suffix_only = count_tokens(tokenizer, geometric_caption("", terms, tokenizer).text)
    words = ["a"] * (CLIP_MAX_LENGTH - suffix_only)  # "a" is one token
    exact = geometric_caption(" ".join(words), terms, tokenizer)
    assert count_tokens(tokenizer, exact.text) == CLIP_MAX_LENGTH
    assert not exact.truncated and exact.text.startswith(" ".join(words) + " qr code")
    over = geometric_caption(" ".join(words + ["red"]), terms, tokenizer)
    assert over.dropped_words == ("red",) and over.text == exact.text


def test_captions_of_every_box_fit(tokenizer):
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    add_tokens(tokenizer, text_encoder, location_tokens(8))
    caption = "a small red circle to the left of a large blue square on a green gradient background " * 3
    for x2 in range(8, 65, 8):
        bins = bins_for_box((0, 0, x2, x2), 64, 64, 8)
        assert count_tokens(tokenizer, geometric_caption(caption, [("qr code", bins)], tokenizer).text) <= CLIP_MAX_LENGTH


def test_added_tokens_survive_save_and_reload(tmp_path):
    tokenizer = build_clip_tokenizer(tmp_path / "vocab")
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    ids = add_tokens(tokenizer, text_encoder, location_tokens(4) + ["<qrcode>"], seed=3)
    before = text_encoder.get_input_embeddings().weight[ids].clone()
    assert len(set(map(tuple, before.tolist()))) == len(ids)  # new rows start distinct
    tokenizer.save_pretrained(tmp_path / "tok")
    text_encoder.save_pretrained(tmp_path / "te")
    tok2 = CLIPTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    te2 = CLIPTextModel.from_pretrained(tmp_path / "te", local_files_only=True)
    assert tok2.convert_tokens_to_ids(location_tokens(4) + ["<qrcode>"]) == ids
    assert tok2.tokenize("x <l2,3> <qrcode>") == ["x</w>", "<l2,3>", "<qrcode>"]
    assert tok2.model_max_length == CLIP_MAX_LENGTH
    assert te2.get_input_embeddings().weight[ids].equal(before)
    assert add_tokens(tok2, te2, location_tokens(4)) == ids[:-1]  # adding again changes nothing


def test_new_token_rows_start_from_the_seed(tmp_path):
    """The same seed gives the same starting rows (a fine-tune is reproducible), another seed other
    rows (training seeds are independent draws)."""
    import torch

    def started(seed, copy):
        tokenizer = build_clip_tokenizer(tmp_path / f"vocab-{seed}-{copy}")
        torch.manual_seed(0)  # the same text encoder each time
        text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
        ids = add_tokens(tokenizer, text_encoder, location_tokens(2), seed=seed)
        return text_encoder.get_input_embeddings().weight[ids].detach()

    assert started(0, "a").equal(started(0, "b"))
    assert not started(0, "a").equal(started(1, "a"))
