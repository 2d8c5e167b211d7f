"""Where a dataset is looked for, in this order: the `data_dir` argument (CLI --data-dir), the
environment variable THREATBENCH_DATA, for fashion-mnist the Debian package's
/usr/share/datasets/fashion-mnist, and last the download cache <threatbench cache>/data
(benchmark.runtime.cache), where torchvision downloads when `download=True`.

A root the user named is never silently skipped: when it lacks the data, the error says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from benchmark.data import idx
from benchmark.data.errors import DATA_ENV_VAR, DataError, how_to_get
from benchmark.runtime.cache import cache_dir

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DataRoot:
    path: Path
    origin: str
    named_by_user: bool  # a root the user named is used or reported, never skipped
    downloads_here: bool = False


def default_cache_dir() -> Path:
    """Where downloads go: <the threatbench cache>/data (benchmark.runtime.cache: $THREATBENCH_CACHE, else
    $XDG_CACHE_HOME/threatbench, else ~/.cache/threatbench), one root for data, weights and examples."""
    return cache_dir() / "data"


def locate_root(dataset: str, data_dir: str | os.PathLike[str] | None) -> DataRoot:
    if data_dir is not None:
        return DataRoot(Path(data_dir).expanduser(), "the data_dir argument (--data-dir)", True)
    from_env = os.environ.get(DATA_ENV_VAR, "")
    if from_env:
        return DataRoot(Path(from_env).expanduser(), f"the {DATA_ENV_VAR} environment variable", True)
    if dataset == "fashion-mnist" and idx.find_dir(DEBIAN_FASHION_MNIST_DIR, dataset) is not None:
        return DataRoot(DEBIAN_FASHION_MNIST_DIR, "the Debian package dataset-fashion-mnist", False)
    return DataRoot(default_cache_dir(), "the download cache", False, downloads_here=True)


def not_found_error(dataset: str, root: DataRoot, layout: str, download: bool) -> DataError:
    """`dataset` is not under `root`: says where it was looked for, what was expected there, and how
    to get it."""
    if root.named_by_user and not root.path.is_dir():
        problem = f"{root.path} (from {root.origin}) does not exist"
    elif root.named_by_user:
        problem = f"{root.path} (from {root.origin}) does not contain {dataset}"
    elif dataset == "imagenet":
        problem = f"no ImageNet data directory was given (--data-dir or {DATA_ENV_VAR}) and {root.path} does not exist"
    elif not download:
        problem = (f"{dataset} is not in the download cache {root.path} and download=False "
                   f"(allow the download, or point to a local copy)")
    else:
        problem = f"{dataset} is not in {root.path}"
    return DataError(f"{problem}; expected {layout}. {how_to_get(dataset)}")
