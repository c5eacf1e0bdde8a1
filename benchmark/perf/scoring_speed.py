"""Scoring throughput: our path (batched ``score_images``) against a plain ultralytics predict loop.

Both run the same weights on the same decoded images at the detector's training image size and the
same threshold; the script also checks that they find the same concepts in every image.

    python benchmark/perf/scoring_speed.py --detector runs/detector-cpu data/icd-tiny/icd-mixed/test
"""
from __future__ import annotations

import argparse
import time
from itertools import islice

from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.detector.inference import DEFAULT_IOU, Detector
from implicit_concept.image_stream import iter_images
from implicit_concept.scoring import ScoreConfig, score_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", help="a folder of images or a shard set")
    parser.add_argument("--detector", required=True, help="the folder `detector train` wrote, or its detector.safetensors")
    parser.add_argument("--limit", type=int, default=500, help="images to time (default: 500)")
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    detector = Detector.load(args.detector)
    images = [im for _, im in islice(iter_images(args.images), args.limit)]
    config = ScoreConfig(conf=args.conf, batch=args.batch)
    model = detector.model
    model.predict(images[0], conf=args.conf, verbose=False)  # warm-up, both paths share the model

    start = time.perf_counter()
    report = score_images(images, detector, config, checkers=[])
    ours = time.perf_counter() - start

    start = time.perf_counter()
    plain = [model.predict(im, conf=args.conf, iou=DEFAULT_IOU, verbose=False)[0] for im in images]
    baseline = time.perf_counter() - start

    ours_concepts = [{d["concept"] for d in im["detections"]} for im in report.images]
    plain_concepts = [{CONCEPT_NAMES[int(c)] for c in r.boxes.cls.tolist()} for r in plain]
    same = sum(a == b for a, b in zip(ours_concepts, plain_concepts))
    n = len(images)
    print(f"{n} images of {images[0].width}x{images[0].height}, detector imgsz {detector.imgsz}, conf {args.conf}, batch {args.batch}")
    print(f"ours (score_images, batched, ICR + bootstrap + FP): {n / ours:8.1f} images/s")
    print(f"plain ultralytics predict loop:                   {n / baseline:8.1f} images/s")
    print(f"ratio ours / plain: {baseline / ours:.2f}x; same concepts found in {same}/{n} images")


if __name__ == "__main__":
    main()
