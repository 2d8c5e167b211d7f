"""Regenerate `imagenet_val_subset.txt`, the fixed 10,000-image ImageNet evaluation subset.

Procedure (stdlib only, so any Python version reproduces it byte for byte):

1. Give each ILSVRC2012 validation image number i = 1..50000 the key
   sha256(f"{SEED}:{i}") read as a big-endian integer, with SEED stated below.
2. Sort the numbers by key (a seeded random permutation) and keep the first 10,000,
   in that order ("draw order"): the first n lines are the subset of size n.
3. Write one file name `ILSVRC2012_val_XXXXXXXX.JPEG` per line, with a trailing newline.

The list holds file names only: labels come from the wnid folder a user's val tree puts each
file in. A keyed hash is used instead of numpy's Generator.choice because numpy does not promise
that Generator methods draw the same stream in future versions.

Usage:
    python benchmark/resources/make_imagenet_subset.py            # rewrite the committed list
    python benchmark/resources/make_imagenet_subset.py --check    # exit 1 if it differs
    python benchmark/resources/make_imagenet_subset.py --output PATH
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

SEED = 20170520  # arXiv v1 date of Tramer et al., "Ensemble Adversarial Training"
VALIDATION_IMAGES = 50_000
SUBSET_SIZE = 10_000
DEFAULT_OUTPUT = Path(__file__).with_name("imagenet_val_subset.txt")


def draw_key(image_number: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{SEED}:{image_number}".encode()).digest(), "big")


def subset_image_numbers() -> list[int]:
    numbers = sorted(range(1, VALIDATION_IMAGES + 1), key=draw_key)
    return numbers[:SUBSET_SIZE]


def subset_file_names() -> list[str]:
    return [f"ILSVRC2012_val_{number:08d}.JPEG" for number in subset_image_numbers()]


def render_subset_list() -> bytes:
    return "".join(name + "\n" for name in subset_file_names()).encode("ascii")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="compare with --output, write nothing")
    args = parser.parse_args(argv)
    content = render_subset_list()
    if args.check:
        same = args.output.is_file() and args.output.read_bytes() == content
        print(f"{args.output}: {'up to date' if same else 'DIFFERS from the procedure'}")
        return 0 if same else 1
    args.output.write_bytes(content)
    print(f"wrote {args.output} ({SUBSET_SIZE} names, sha256 {hashlib.sha256(content).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
