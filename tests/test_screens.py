"""Honest captions and clean twins from real sources: a caption that names a concept is dropped,
stripped or flagged; a source image that already shows a concept (the detector, the QR decoder) is
flagged or dropped; both are recorded per sample and counted in the stats and the dataset card."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import qrcode
from PIL import Image

import builders.source_screen as source_screen
from benchmark.cli import main
from builders.build import build_dataset
from builders.caption_screen import DEFAULT_WORDS, CaptionScreen
from builders.recipe import RecipeError, load_recipe, parse_recipe
from builders.verify import verify_dataset
from implicit_concept.concepts import CONCEPTS
from implicit_concept.scene.grammar import ProceduralConfig, caption, sample_scene
from implicit_concept.shard_reader import iter_samples

CAPTIONS = {
    "clean": "a red square on a white background",
    "qr": "a poster with a QR-code",
    "both": "Logo and watermark of a shop, text on a sign",
    "only": "the watermark",
    "near": "a textured wall in context with a logotype",
}


def test_the_vocabulary_names_each_concept_and_matches_whole_words():
    screen = CaptionScreen("flag")
    for c in CONCEPTS:
        assert screen.check(f"an image with {c.word}").names == (c.name,)
        assert screen.check(f"an image with a {c.phrase}").names == (c.name,)
    assert screen.check(CAPTIONS["near"]).names == ()
    assert screen.check("scan the qrcode, QR_Code or qr code").names == ("qrcode",)
    assert screen.check("©2015 Jane Doe").names == ("watermark",)
    assert set(DEFAULT_WORDS) == {c.name for c in CONCEPTS}


@pytest.mark.parametrize(("caption", "concept"), [
    ("ＱＲ ｃｏｄｅ sticker", "qrcode"), ("ｗａｔｅｒｍａｒｋ on photo", "watermark"), ("ＱＲコード", "qrcode"),
    ("company_logo", "watermark"), ("qr_code_scan", "qrcode"), ("my_qrcode", "qrcode"), ("watermark2", "watermark"),
    ("QR코드 스티커", "qrcode"), ("water mark on photo", "watermark"), ("water-marked photo", "watermark"),
    ("Wa\u00adtermark", "watermark"), ("qr\u200bcode", "qrcode"), ("qr\u00a0code", "qrcode"), ("TEXT\u202e", "text"),
])
def test_a_concept_named_in_any_spelling_is_found(caption, concept):
    """Full-width letters, words joined by underscores, digits or another script, format characters
    inside a word and compounds written apart all name the concept."""
    assert CaptionScreen("flag").check(caption).names == (concept,)


@pytest.mark.parametrize("caption", ["a textbook on a desk", "in context", "a pretext", "texture of wood", "a logotype",
                                     "İQR", "a caf\u00e9 subtexts", "watermarkless"])
def test_a_word_inside_a_longer_latin_word_is_not_the_word(caption):
    assert CaptionScreen("flag").check(caption).names == ()


@pytest.mark.parametrize(("caption", "stripped"), [
    ("Logo-free image", "image"), ("qrcode's menu", "menu"), ("a logos-themed shirt", "shirt"),
    ("scan qr\u200bcode now", "scan now"), ("ＱＲ ｃｏｄｅ sticker on a ｗａｌｌ", "sticker on a ｗａｌｌ"),
    ("QR코드 스티커", "스티커"), ("a photo with company_logo.png on it", "a photo with on it"),
    ("a red door, water-marked, at dusk", "a red door, at dusk"), ("the Watermark\u2019s edge", "edge"),
])
def test_strip_takes_out_the_whole_token_and_leaves_clean_spacing(caption, stripped):
    verdict = CaptionScreen("strip").check(caption)
    assert verdict.caption == stripped and verdict.stripped


def test_no_procedural_caption_names_a_concept():
    screen = CaptionScreen()
    config = ProceduralConfig(train=1, test=1)
    assert not [c for i in range(3000) if screen.check(c := caption(sample_scene(np.random.default_rng([1, i]), config))).names]


def test_the_three_policies():
    assert CaptionScreen("drop").check(CAPTIONS["qr"]).reason == "caption_names_concept"
    stripped = CaptionScreen("strip").check(CAPTIONS["both"])
    assert stripped.names == ("text", "watermark") and stripped.stripped and stripped.caption == "and of a shop, on a sign"
    assert CaptionScreen("strip").check(CAPTIONS["only"]).reason == "caption_empty_after_screen"
    flagged = CaptionScreen("flag").check(CAPTIONS["both"])
    assert flagged.caption == CAPTIONS["both"] and flagged.names == ("text", "watermark")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("caption_screen", {"policy": "blur"}, "caption_screen.policy must be one of"),
    ("caption_screen", {"words": {"logo": ["logo"]}}, "caption_screen.words.logo: unknown field"),
    ("caption_screen", {"words": {"text": []}}, "caption_screen.words.text must be a non-empty list"),
    ("caption_screen", {"polcy": "drop"}, "caption_screen.polcy: unknown field"),
    ("source_screen", {"policy": "strip"}, "source_screen.policy must be one of"),
    ("source_screen", {"conf": 0}, "source_screen.conf: expected a number in (0, 1]"),
    ("source_screen", {"detector": "/no/such/detector"}, "/no/such/detector"),
    ("license", "Apache 2.0", "license must be a license identifier"),
])
def test_screen_fields_are_checked_naming_the_field(field, value, message):
    raw = load_recipe("icd-debug").to_dict()
    with pytest.raises(RecipeError, match=None) as info:
        parse_recipe({**raw, field: value})
    assert message in str(info.value)


def _source(root: Path, images: dict[str, Image.Image] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, text) in enumerate(CAPTIONS.items()):
        image = (images or {}).get(name, Image.new("RGB", (48, 48), (30 * i, 120, 160)))
        image.save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(text)
    return root


def _recipe(src: Path, **extra) -> dict:
    return {
        "name": "screened", "seed": 4, "image_size": 48, "shard_size": 100,
        "source": {"kind": "folder", "path": str(src), "test_fraction": 0.0},
        "subsets": [{"name": "q", "concepts": ["qrcode"], "fraction": 0.5}, {"name": "t", "concepts": ["text"], "fraction": 0.5}],
        **extra,
    }


def _records(out: Path) -> dict[str, dict]:
    return {s.meta.source["id"].split(".")[0]: s.meta.to_json() for s in iter_samples(out / "q")}


@pytest.mark.parametrize("policy", ["drop", "strip", "flag"])
def test_a_build_screens_captions_records_and_counts(tmp_path, policy):
    out = tmp_path / policy
    report = build_dataset(parse_recipe(_recipe(_source(tmp_path / "src"), caption_screen={"policy": policy})), out, progress=False)
    records = _records(out)
    stats = json.loads((out / "q/train/00000_stats.json").read_text())
    assert stats["screened"]["caption_names"] == {"qrcode": 1, "text": 1, "watermark": 2}
    assert report.summary.caption_names == {"qrcode": 1, "text": 1, "watermark": 2}  # per source item, not per subset
    card = (out / "README.md").read_text()
    assert "source captions naming a concept, by concept: qrcode 1, text 1, watermark 2" in card
    if policy == "drop":
        assert set(records) == {"clean", "near"} and report.failures == {"caption_names_concept": 3}
        assert "captions never name a concept" in card
    elif policy == "strip":
        assert set(records) == {"clean", "near", "qr", "both"} and report.failures == {"caption_empty_after_screen": 1}
        assert records["both"]["caption"] == "and of a shop, on a sign"
        assert records["both"]["screen"] == {"caption_names": ["text", "watermark"], "caption_stripped": True, "source_shows": []}
        assert records["qr"]["caption"] == "a poster with"
    else:
        assert set(records) == set(CAPTIONS) and report.failures == {}
        assert records["both"]["caption"] == CAPTIONS["both"]
        assert records["both"]["screen"]["caption_names"] == ["text", "watermark"] and not records["both"]["screen"]["caption_stripped"]
        assert "such captions name a concept" in card
    assert records["clean"]["screen"] == {"caption_names": [], "caption_stripped": False, "source_shows": []}
    assert verify_dataset(out).ok


class RedMeansWatermark:
    """A stand-in for the detector: a watermark wherever an image has a pure red pixel."""

    calls = 0

    def detect(self, image, conf=0.25):
        from implicit_concept.detector.inference import Detection

        RedMeansWatermark.calls += 1
        red = (np.asarray(image.convert("RGB")) == (255, 0, 0)).all(axis=-1)
        return [Detection("watermark", 0.9, (0.0, 0.0, 4.0, 4.0))] if red.any() else []


class HalfSureWatermark:
    """A stand-in for the detector that sees a watermark at confidence 0.5 in every image, and, as
    the real one does, reports only detections at or above the ``conf`` it is asked at."""

    def detect(self, image, conf=0.25):
        from implicit_concept.detector.inference import Detection

        return [Detection("watermark", 0.5, (0.0, 0.0, 4.0, 4.0))] if 0.5 >= conf else []


@pytest.mark.parametrize("conf, shows", [(0.6, []), (0.5, ["watermark"]), (0.4, ["watermark"])])
def test_the_source_screen_asks_the_detector_at_the_recipes_confidence(conf, shows):
    """``source_screen.conf`` decides what counts as already there, not the detector's default 0.25."""
    screen = source_screen.SourceScreen(source_screen.SourceScreenConfig(detector="fake", conf=conf), detector=HalfSureWatermark())
    assert screen.shows(Image.new("RGB", (32, 32), (90, 90, 90))) == shows


def _qr_image() -> Image.Image:
    code = qrcode.make("https://example.com/already-here", box_size=4, border=2).convert("RGB")
    canvas = Image.new("RGB", (200, 200), (255, 255, 255))
    canvas.paste(code.resize((180, 180), Image.Resampling.NEAREST), (10, 10))
    return canvas


@pytest.mark.parametrize("policy", ["flag", "drop"])
def test_the_source_screen_flags_or_drops_images_that_already_show_a_concept(tmp_path, monkeypatch, policy):
    red = Image.new("RGB", (48, 48), (90, 90, 90))
    red.paste((255, 0, 0), (10, 10, 30, 30))
    src = _source(tmp_path / "src", {"clean": red, "near": _qr_image()})
    loaded = []
    monkeypatch.setattr(source_screen, "load_detector", lambda path: loaded.append(path) or RedMeansWatermark())
    monkeypatch.setattr(source_screen, "detector_fingerprint", lambda path: {"path": str(path), "sha256": "0" * 64})
    monkeypatch.setattr("builders.build.detector_fingerprint", source_screen.detector_fingerprint)
    raw = _recipe(src, caption_screen={"policy": "flag"},
                  source_screen={"detector": "fake-detector", "qr_decode": True, "policy": policy})
    recipe = parse_recipe(raw, check_components=False)
    out = tmp_path / policy
    report = build_dataset(recipe, out, progress=False)
    assert loaded == ["fake-detector"]
    records = _records(out)
    assert report.summary.source_shows == {"qrcode": 1, "watermark": 1}
    if policy == "flag":
        assert records["clean"]["screen"]["source_shows"] == ["watermark"] and records["near"]["screen"]["source_shows"] == ["qrcode"]
        assert records["qr"]["screen"]["source_shows"] == []
    else:
        assert not {"clean", "near"} & set(records) and report.failures == {"concept_in_source": 2}
    assert "source images already showing a concept, by concept: qrcode 1, watermark 1" in (out / "README.md").read_text()
    record = json.loads((out / "recipe.json").read_text())
    assert record["screen_detector"] == {"path": "fake-detector", "sha256": "0" * 64}


def test_a_screen_detector_on_the_command_line_must_exist(tmp_path, capsys):
    assert main(["build", "icd-debug", "--screen-detector", str(tmp_path / "nodetector"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert str(tmp_path / "nodetector") in capsys.readouterr().err


#: Captions that name a concept in another language or another spelling of its English name.
NAMING = {
    "qrcode": ["Q.R. code on a flyer", "Q R code", "q-r code", "二维码海报", "扫描二維碼", "QRコードを読む", "二次元コード",
               "QR코드 스티커", "큐알코드", "código QR", "QR-код на двери", "QR-Code auf Plakat", "code QR"],
    "watermark": ["(c) 2020 john doe", "(C)2019 Studio", "Wasserzeichen auf Foto", "photo avec filigrane", "foto con marca de agua",
                  "foto com marca d'água", "foto com marca d\u2019agua", "immagine con filigrana", "фото с водяным знаком",
                  "водяной знак", "без водяного знака", "图片带水印", "ウォーターマーク付き", "透かし入り写真", "워터마크가 있는 사진",
                  "логотип компании"],
    "text": ["texte sur image", "texto en la imagen", "immagine con testo", "картинка с текстом", "надпись на стене",
             "sous-titres français", "película con subtítulos", "film con sottotitoli", "T-Shirt mit Schriftzug", "字幕",
             "带文字的图片", "テキスト入り", "텍스트 이미지", "maglietta con scritta", "calligraphy on paper", "a handwritten note"],
}

#: Ordinary captions, English and not, that name no concept (words that hold a vocabulary word's letters included).
ORDINARY = [
    "a textured wall", "in the context of war", "a textile pattern", "a pretext for a walk", "texture of wood",
    "a dog by the waterfall", "logistics truck on a road", "wording on the fence is hard to read? no, a swordfish",
    "option (c) in a quiz", "figure 3(c) of a paper", "quarry road at dusk", "une table en bois dans le contexte",
    "un contexto histórico", "el textil de algodón", "il contesto della foto", "una protesta in piazza", "testosterone levels",
    "Kontext der Ausstellung", "Textilien aus Wolle", "Wasserfall im Wald", "контекст войны", "текстура дерева",
    "текстиль из льна", "山水印象", "山水画", "文字通りの意味", "光を透かして見る", "한국의 풍경", "海边的日落", "東京の夜景",
    "marca de coche", "água de coco", "Wasser und Zeichen", "腕時計の文字盤", "絵文字のスタンプ",
]


@pytest.mark.parametrize("concept", sorted(NAMING))
def test_the_default_vocabulary_names_concepts_in_common_languages_and_spellings(concept):
    screen = CaptionScreen("flag")
    assert {c: screen.check(c).names for c in NAMING[concept]} == {c: (concept,) for c in NAMING[concept]}


def test_ordinary_captions_in_any_language_name_no_concept():
    screen = CaptionScreen("flag")
    assert {c: screen.check(c).names for c in ORDINARY if screen.check(c).names} == {}
    assert len(ORDINARY) >= 30


@pytest.mark.parametrize(("caption", "stripped"), [
    ("图片带水印", "图片带"), ("QRコード付きのポスター", "付きのポスター"), ("фото с водяным знаком", "фото с"),
    ("Photo (c) 2020 Jane", "Photo 2020 Jane"),
])
def test_strip_takes_out_only_the_words_in_scripts_without_spaces(caption, stripped):
    assert CaptionScreen("strip").check(caption).caption == stripped


@pytest.mark.parametrize("caption", ["a Water\u200dmark", "qr\u200ccode", "wa\u00adter\u2060mark", "\u200fTEXT\u200e"])
def test_a_caption_keeps_its_joiners_and_the_screen_still_sees_the_word(caption):
    """Caption clean-up keeps ZWJ / ZWNJ (part of spellings); the screen matches without them."""
    from builders.sources.caption_text import read_caption

    kept, _, _ = read_caption(caption.encode())
    assert CaptionScreen("flag").check(kept).names != () and ("\u200d" in kept) == ("\u200d" in caption)
