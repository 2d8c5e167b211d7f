"""A split of an array dataset (MNIST family, CIFAR): read from its root, downloaded into the cache
first when it is not there and downloading is allowed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from benchmark.data import cifar, idx
from benchmark.data.errors import DataError, how_to_get
from benchmark.data.roots import DataRoot, locate_root, not_found_error

FILE_FORMATS = {"mnist": idx, "fashion-mnist": idx, "cifar10": cifar, "cifar100": cifar}


def load_split(dataset: str, split: str, data_dir: str | os.PathLike[str] | None,
               download: bool) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N,C,H,W, int64 N) of a split, downloading into the cache if allowed and needed."""
    root = locate_root(dataset, data_dir)
    try:
        return _read_split(dataset, root, split, download)
    except DataError:
        if not (download and root.downloads_here):
            raise
    _download(dataset, root.path)
    return _read_split(dataset, root, split, download)


def _read_split(dataset: str, root: DataRoot, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    file_format = FILE_FORMATS[dataset]
    directory = file_format.find_dir(root.path, dataset)
    if directory is None:
        raise not_found_error(dataset, root, file_format.expected_layout(dataset), download)
    return file_format.read_split(dataset, directory, split)


def _download(dataset: str, root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        FILE_FORMATS[dataset].download(dataset, root)
    except Exception as error:  # network, disk and checksum failures all end the same way
        raise DataError(f"could not download {dataset} into {root} ({type(error).__name__}: "
                        f"{error}). {how_to_get(dataset)}") from error
