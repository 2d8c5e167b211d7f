"""The fixed evaluation subsets and the training splits of every benchmark dataset.

Evaluation subset = the first n examples of the test split (ImageNet: the first n names of the
committed list `resources/imagenet_val_subset.txt`). Its identity is `EvaluationSet.sha256`.

Where data is looked for: `roots` (the data_dir argument, THREATBENCH_DATA, the Debian
Fashion-MNIST package, the download cache under the threatbench cache). Files are parsed strictly,
one module per format: `idx` (MNIST, Fashion-MNIST), `cifar` (CIFAR-10/100 batch pickles, through
an unpickler that only rebuilds numpy arrays) and `imagenet`. Every problem a user can fix raises
`DataError` with what is wrong and how to get the data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from benchmark.data.errors import DATA_ENV_VAR, DataError
from benchmark.data.evaluation_set import (
    EvaluationSet,
    InMemoryImages,
    subset_sha256,
    to_unit_float,
)
from benchmark.data.imagenet import (
    DEFAULT_IMAGENET_PREPROCESSING,
    IMAGENET_SUBSET_SHA256,
    IMAGENET_SUBSET_SIZE,
    IMAGENET_SYNSETS_SHA256,
    imagenet_subset_file_names,
    imagenet_synsets,
    load_imagenet_subset,
)
from benchmark.data.roots import default_cache_dir, locate_root
from benchmark.data.splits import load_split
from benchmark.spec.names import DATASETS

__all__ = [
    "DATASETS", "DATA_ENV_VAR", "DataError", "EvaluationSet", "DEFAULT_IMAGENET_PREPROCESSING",
    "IMAGENET_SUBSET_SHA256", "IMAGENET_SUBSET_SIZE", "IMAGENET_SYNSETS_SHA256", "load_evaluation_set",
    "load_training_tensors", "resolve_data_root", "default_cache_dir", "subset_sha256",
    "imagenet_synsets", "imagenet_subset_file_names",
]


def load_evaluation_set(
    dataset: str,
    n: int,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    imagenet_preprocessing: Mapping[str, Any] | None = None,
) -> EvaluationSet:
    """The fixed evaluation subset: the first n examples of the test split (ImageNet: of the list).

    `imagenet_preprocessing` (resize, crop, interpolation) only applies to imagenet.
    """
    _check_dataset(dataset)
    _check_count("n", n)
    if dataset == "imagenet":
        return load_imagenet_subset(n, data_dir, imagenet_preprocessing)
    images, labels = load_split(dataset, "test", data_dir, download)
    if n > len(labels):
        raise DataError(f"n={n} examples requested but the {dataset} test split has only "
                        f"{len(labels)}; use n <= {len(labels)}")
    images, labels = images[:n], labels[:n]
    return EvaluationSet(
        dataset=dataset,
        n=n,
        sha256=subset_sha256(images, labels),
        labels=torch.from_numpy(labels),
        image_loader=InMemoryImages(torch.from_numpy(images)),
    )


def load_training_tensors(
    dataset: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split as (x float32 N,C,H,W in [0,1], y int64 N); `limit` keeps the first ones."""
    _check_dataset(dataset)
    if dataset == "imagenet":
        raise DataError("training on imagenet is not supported: the imagenet entries use pretrained "
                        "timm models; train on mnist, fashion-mnist, cifar10 or cifar100")
    if limit is not None:
        _check_count("limit", limit)
    images, labels = load_split(dataset, "train", data_dir, download)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return to_unit_float(torch.from_numpy(images)), torch.from_numpy(labels)


def resolve_data_root(dataset: str, data_dir: str | os.PathLike[str] | None) -> Path:
    """The root `dataset` is read from: data_dir, THREATBENCH_DATA, Debian (fashion-mnist), cache."""
    _check_dataset(dataset)
    return locate_root(dataset, data_dir).path


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
