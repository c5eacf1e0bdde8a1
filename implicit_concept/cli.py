"""``implicit-concept``: a thin command line over the library; every command maps to one call."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _build(args: argparse.Namespace) -> int:
    from builders.build import build_dataset
    from builders.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    out = Path(args.out or Path("data") / recipe.name)
    report = build_dataset(recipe, out, workers=args.workers, progress=not args.quiet)
    print(
        f"{out}: {report.samples} samples; {report.built} shards built, {report.skipped} already complete; "
        f"failures: {json.dumps(report.failures, sort_keys=True) or '{}'}"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from builders.verify import verify_dataset

    report = verify_dataset(Path(args.dir))
    for problem in report.problems:
        print(problem, file=sys.stderr)
    status = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    print(f"{args.dir}: {report.shards} shards, {report.samples} samples, {report.instances} instances: {status}")
    return 0 if report.ok else 1


def _show(args: argparse.Namespace) -> int:
    from builders.preview import preview_dataset

    dest = preview_dataset(Path(args.dir), Path(args.out), count=args.count, contaminated_only=args.contaminated)
    print(dest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="implicit-concept", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="synthesize an ICD dataset from a recipe into WebDataset shards")
    p.add_argument("recipe", help="a recipe TOML file, or the name of one in manifests/ (icd-tiny, icd-v1, ...)")
    p.add_argument("--out", help="output folder (default: data/<recipe name>)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_build)

    p = sub.add_parser("verify", help="check a built dataset: checksums, schema, boxes, counts")
    p.add_argument("dir")
    p.set_defaults(func=_verify)

    p = sub.add_parser("show", help="write a contact sheet of samples with their boxes")
    p.add_argument("dir", help="a dataset folder, shard set folder, tar, or brace pattern")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--contaminated", action="store_true", help="only samples that carry a concept")
    p.set_defaults(func=_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"implicit-concept {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
