"""DataError: what is wrong with the data, and how to get it and point threatbench at it.

Every problem a user can fix ends with `how_to_get(dataset)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.errors import ThreatbenchError

DATA_ENV_VAR = "THREATBENCH_DATA"

_HOW_TO_OBTAIN = {
    "mnist": (
        "Get MNIST with torchvision.datasets.MNIST(<root>, download=True), or download "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz from https://ossci-datasets.s3.amazonaws.com/mnist/ into <root> "
        "(or <root>/MNIST/raw/)"
    ),
    "fashion-mnist": (
        "Get Fashion-MNIST with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs "
        "/usr/share/datasets/fashion-mnist), or download train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from "
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion/) into <root> "
        "(or <root>/FashionMNIST/raw/)"
    ),
    "cifar10": (
        "Download the python version https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and "
        "extract it into <root>, giving <root>/cifar-10-batches-py/data_batch_1..data_batch_5 and "
        "test_batch"
    ),
    "cifar100": (
        "Download the python version https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and "
        "extract it into <root>, giving <root>/cifar-100-python/train and test"
    ),
    "imagenet": (
        "ImageNet cannot be downloaded automatically (its license requires registration): get "
        "ILSVRC2012_img_val.tar from https://image-net.org/download-images, sort the 50,000 images "
        "into one folder per synset, <root>/val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG (for example "
        "with torchvision.datasets.ImageNet(<root>, split='val') and the devkit, or the common "
        "valprep.sh script)"
    ),
}
_HOW_TO_POINT = f"then pass --data-dir <root> (data_dir=<root>) or set {DATA_ENV_VAR}=<root>"


class DataError(ThreatbenchError):
    """Data missing, incomplete or malformed; the message names the file and how to get the data."""


def how_to_get(dataset: str) -> str:
    return f"{_HOW_TO_OBTAIN[dataset]}; {_HOW_TO_POINT}."


def check_label_range(dataset: str, labels: np.ndarray, num_classes: int, path: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path} has labels outside 0..{num_classes - 1}: not a {dataset} file. "
                        f"{how_to_get(dataset)}")
