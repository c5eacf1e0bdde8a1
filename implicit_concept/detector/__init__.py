"""The concept detector: inference (the boxes that score every method and feed ge-detector),
training on ICD shards (background and calibration images, per-concept thresholds), its weights-only
files, export to YOLO and COCO formats, and the one place ultralytics is imported."""
