"""MNIST and Fashion-MNIST: idx files (plain or gzip), parsed strictly with numpy."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from benchmark.data.errors import DataError, check_label_range, how_to_get

SUBDIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}   # torchvision's folder names
_SPLIT_PREFIX = {"test": "t10k", "train": "train"}
_KINDS = ("images-idx3-ubyte", "labels-idx1-ubyte")
_UBYTE = 0x08
_IMAGE_SHAPE = (28, 28)
_CLASSES = 10


def expected_layout(dataset: str) -> str:
    return (f"t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz], train-images-idx3-ubyte[.gz] "
            f"and train-labels-idx1-ubyte[.gz] directly in the root or in <root>/"
            f"{SUBDIRS[dataset]}/raw/")


def find_dir(root: Path, dataset: str) -> Path | None:
    """The first of root, root/<MNIST|FashionMNIST>/raw holding any idx file of the dataset."""
    stems = [f"{prefix}-{kind}" for prefix in _SPLIT_PREFIX.values() for kind in _KINDS]
    for directory in (root, root / SUBDIRS[dataset] / "raw"):
        if any(_idx_file(directory, stem) for stem in stems):
            return directory
    return None


def read_split(dataset: str, directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N,1,28,28, int64 N) of a split's idx files in `directory`."""
    prefix = _SPLIT_PREFIX[split]
    images_path = _require_idx_file(dataset, directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _require_idx_file(dataset, directory, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(dataset, images_path, ndim=3)
    labels = _read_idx(dataset, labels_path, ndim=1)
    if images.shape[1:] != _IMAGE_SHAPE:
        raise DataError(f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, expected "
                        f"28x28: not a {dataset} file. {how_to_get(dataset)}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
                        f"labels: the files do not belong together. {how_to_get(dataset)}")
    check_label_range(dataset, labels, _CLASSES, labels_path)
    return images[:, None], labels.astype(np.int64)


def download(dataset: str, root: Path) -> None:
    import torchvision.datasets as tv_datasets

    getattr(tv_datasets, SUBDIRS[dataset])(str(root), train=False, download=True)


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _require_idx_file(dataset: str, directory: Path, stem: str) -> Path:
    path = _idx_file(directory, stem)
    if path is None:
        raise DataError(f"{dataset} data in {directory} is incomplete: {stem}[.gz] is missing. "
                        f"{how_to_get(dataset)}")
    return path


def _read_idx(dataset: str, path: Path, ndim: int) -> np.ndarray:
    """A uint8 idx file (gzip or plain) as an array, checking magic, dims and file length."""
    raw = _read_maybe_gzip(dataset, path)
    header_size = 4 + 4 * ndim
    if len(raw) < 4 or raw[:3] != bytes([0, 0, _UBYTE]) or raw[3] != ndim:
        raise DataError(f"{path} is not a uint8 idx{ndim} file (magic {raw[:4].hex() or 'empty'}, "
                        f"expected 0000080{ndim}). {how_to_get(dataset)}")
    if len(raw) < header_size:
        raise DataError(f"{path} is truncated inside its header. {how_to_get(dataset)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected_size = header_size + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected_size:
        raise DataError(f"{path} is truncated or damaged: its header announces shape {dims} "
                        f"({expected_size} bytes) but it has {len(raw)} bytes. {how_to_get(dataset)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims).copy()


def _read_maybe_gzip(dataset: str, path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} is not a valid gzip file ({error}); it is probably a truncated "
                        f"download. {how_to_get(dataset)}") from error
