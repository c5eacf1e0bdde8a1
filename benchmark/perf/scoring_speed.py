"""Scoring throughput: our path (batched ``score_images``) against a plain ultralytics predict loop.

Both run the same weights on the same decoded images at the detector's training image size and the
same threshold; the script also checks that they find the same concepts in every image.

    python -m benchmark.perf.scoring_speed                      # the published evaluator on icd-tiny's icd-mixed test split
    python -m benchmark.perf.scoring_speed IMAGES --detector DIR

Without IMAGES it times ``data/icd-tiny/icd-mixed/test`` (``make dataset``) when that is built, else
``icd-debug``'s (32 images, built into a temporary folder in seconds).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

from benchmark.perf import probe_cli


#: The images timed when none are named: the embedded default's test split, once ``make dataset`` built it.
DEFAULT_IMAGES = Path("data/icd-tiny/icd-mixed/test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = probe_cli.parser("benchmark.perf.scoring_speed", __doc__.splitlines()[0])
    parser.add_argument("images", nargs="?", type=probe_cli.existing("source"), help=f"a folder of images or a shard set (default: {DEFAULT_IMAGES} when built, "
                                                  "else icd-debug's icd-mixed test split, built into a temporary folder)")
    parser.add_argument("--detector", type=probe_cli.existing("path"), help="the folder `detector train` wrote, or its detector.safetensors (default: the tiny track's published evaluator)")
    parser.add_argument("--limit", type=probe_cli.count(1), default=500, help="images to time (default: %(default)s)")
    parser.add_argument("--conf", type=probe_cli.number(0, 1), default=0.25, help="one threshold for every concept, both paths (default: %(default)s)")
    parser.add_argument("--batch", type=probe_cli.count(1), default=64, help="our path's batch size (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scoring-speed-") as tmp:
        images = args.images or _default_images(Path(tmp))
        return measure(images, args)


def _default_images(tmp: Path) -> Path:
    if DEFAULT_IMAGES.is_dir():
        return DEFAULT_IMAGES
    from builders.build import build_dataset
    from builders.recipe import load_recipe

    print(f"{DEFAULT_IMAGES}: not built (make dataset); timing icd-debug's icd-mixed test split instead", file=sys.stderr)
    build_dataset(load_recipe("icd-debug"), tmp / "icd-debug", workers=1, progress=False)
    return tmp / "icd-debug" / "icd-mixed" / "test"


def measure(images_from: str | Path, args: argparse.Namespace) -> int:
    from benchmark.published_models import default_detector
    from implicit_concept.concepts import CONCEPT_NAMES
    from implicit_concept.detector.inference import DEFAULT_IOU, Detector
    from implicit_concept.image_stream import iter_images
    from implicit_concept.scoring import ScoreConfig, score_images

    images = [im for _, im in islice(iter_images(images_from), args.limit)]  # a folder with none is refused before the detector loads
    detector = Detector.load(args.detector or default_detector("tiny"))
    config = ScoreConfig(conf=args.conf, batch=args.batch)
    model = detector.model
    plain_options = {"imgsz": detector.imgsz, "conf": args.conf, "iou": DEFAULT_IOU, "device": detector.device, "verbose": False}
    model.predict(images[0], **plain_options)  # warm-up, both paths share the model

    start = time.perf_counter()
    report = score_images(images, detector, config, checkers=[])
    ours = time.perf_counter() - start

    start = time.perf_counter()
    plain = [model.predict(im, **plain_options)[0] for im in images]
    baseline = time.perf_counter() - start

    ours_concepts = [{d["concept"] for d in im["detections"]} for im in report.images]
    plain_concepts = [{CONCEPT_NAMES[int(c)] for c in r.boxes.cls.tolist()} for r in plain]
    same = sum(a == b for a, b in zip(ours_concepts, plain_concepts))
    n = len(images)
    print(f"{images_from}: {n} images of {images[0].width}x{images[0].height}; detector {detector.path}, imgsz {detector.imgsz}, "
          f"conf {args.conf}, batch {args.batch}")
    print(f"ours (score_images, batched, ICR + bootstrap + FP): {n / ours:8.1f} images/s")
    print(f"plain ultralytics predict loop:                   {n / baseline:8.1f} images/s")
    print(f"ratio ours / plain: {baseline / ours:.2f}x; same concepts found in {same}/{n} images")
    return 0


if __name__ == "__main__":
    sys.exit(probe_cli.run(main))
