"""The name-aware base's data: concepts appear only where the caption names them, drawn from
train-split assets only, as a pure function of the seed."""

import numpy as np
import pytest
from PIL import Image

from benchmark.models.base_model import BaseModelConfig, ProceduralSamples
from benchmark.models.named_scenes import NamedConcepts, NamedSceneMaker, named_prompt, naming, place
from implicit_concept.concepts import CONCEPT_NAMES, concept
from implicit_concept.concepts.assets import AssetPool
from implicit_concept.sample import Box, Instance
from implicit_concept.scene.grammar import ProceduralConfig


def _samples(share: float, count: int = 240):
    data = ProceduralSamples(ProceduralConfig(train=count, test=0), 64, 3, NamedConcepts(share=share))
    return list(data.samples())


def test_a_concept_appears_exactly_where_the_caption_names_it():
    samples = _samples(0.5)
    named = [s for s in samples if s.meta.instances]
    assert 0.35 * len(samples) < len(named) < 0.65 * len(samples)
    clean = {s.meta.key: s for s in _samples(0.0)}
    seen = set()
    for s in samples:
        names = [c for c in CONCEPT_NAMES if f", with {naming(c)}" in s.meta.caption]
        if s.meta.instances:
            (name,) = {i.concept for i in s.meta.instances}
            assert names == [name], s.meta.caption
            assert s.meta.caption.startswith(clean[s.meta.key].meta.caption + ", with ")
            assert np.abs(np.asarray(s.image, dtype=int) - np.asarray(clean[s.meta.key].image, dtype=int)).max() > 0
            seen.add(name)
        else:
            assert names == [] and s.meta.caption == clean[s.meta.key].meta.caption
            assert np.array_equal(np.asarray(s.image), np.asarray(clean[s.meta.key].image))
    assert seen == set(CONCEPT_NAMES)


def test_named_scenes_draw_only_train_split_assets():
    import os

    train, test = AssetPool.for_split("train"), AssetPool.for_split("test")
    train_fonts = {os.path.basename(f) for f in train.fonts}
    test_fonts = {os.path.basename(f) for f in test.fonts}
    train_text = "\n".join((*train.text_words, *train.text_phrases)).lower()  # sign plates wrap lines
    checked = {c: 0 for c in CONCEPT_NAMES}
    for s in _samples(1.0, 150):
        for inst in s.meta.instances:
            p = inst.params
            if "font" in p:
                assert p["font"] in train_fonts and p["font"] not in test_fonts, (s.meta.key, p["font"])
            if "payload_family" in p:
                assert p["payload_family"] in train.qr_payload_families, (s.meta.key, p["payload_family"])
            if "logo_seed" in p:
                assert p["logo_seed"] in train.logo_seeds
            if "text" in p:
                said = " ".join(p["text"].lower().split())
                if inst.concept == "text":  # a train word, or words of a train phrase
                    assert said in train_text, (s.meta.key, p["text"])
                if inst.concept == "watermark" and p.get("kind") == "text":  # a train brand, never a test one
                    assert any(b.lower() in said for b in train.brand_words), (s.meta.key, p["text"])
                    assert not any(b.lower() in said for b in test.brand_words), (s.meta.key, p["text"])
            checked[inst.concept] += 1
    assert all(checked.values()), checked


def test_the_named_scenes_are_the_same_for_the_same_seed_and_differ_for_another():
    a = [(s.meta.caption, s.image.tobytes()) for s in _samples(0.5, 40)]
    b = [(s.meta.caption, s.image.tobytes()) for s in _samples(0.5, 40)]
    assert a == b
    other = ProceduralSamples(ProceduralConfig(train=40, test=0), 64, 4, NamedConcepts(share=0.5))
    assert a != [(s.meta.caption, s.image.tobytes()) for s in other.samples()]


def test_the_place_a_caption_says_is_where_the_box_lies():
    def at(x1, y1, x2, y2):
        return place([Instance("qrcode", Box(x1, y1, x2, y2), {})], 64, 64)

    assert at(0, 0, 10, 10) == "in the top left"
    assert at(54, 54, 64, 64) == "in the bottom right"
    assert at(27, 27, 37, 37) == "in the centre"
    assert at(27, 0, 37, 8) == "at the top"
    assert named_prompt("a red circle", "qrcode") == f"a red circle, with a {concept('qrcode').word}"
    assert named_prompt("a red circle", "text") == "a red circle, with text"


def test_bases_without_named_scenes_keep_their_config_hash_and_bad_shares_fail():
    plain = BaseModelConfig()
    assert "named" not in plain.to_dict()
    assert BaseModelConfig(named=NamedConcepts(share=0.3)).sha256 != plain.sha256
    with pytest.raises(ValueError, match="named.share"):
        NamedConcepts(share=1.5)
    with pytest.raises(ValueError, match="unknown concept"):
        NamedConcepts(share=0.1, concepts=("logo",))


def test_a_scene_left_clean_is_the_callers_image_untouched():
    image = Image.new("RGB", (64, 64), (10, 20, 30))
    maker = NamedSceneMaker(NamedConcepts(share=0.0))
    assert maker.make(image, "a caption", [0, 1, 2]) == (image, "a caption", [])
