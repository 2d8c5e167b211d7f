"""CIFAR-10 and CIFAR-100: the python version's batch pickles, read with an unpickler that only
rebuilds numpy arrays."""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data.errors import DataError, check_label_range, how_to_get


@dataclass(frozen=True)
class _Layout:
    folder: str
    files: dict[str, tuple[str, ...]]
    label_key: str
    num_classes: int


_LAYOUTS = {
    "cifar10": _Layout(
        "cifar-10-batches-py",
        {"test": ("test_batch",), "train": tuple(f"data_batch_{i}" for i in range(1, 6))},
        "labels",
        10,
    ),
    "cifar100": _Layout("cifar-100-python", {"test": ("test",), "train": ("train",)}, "fine_labels", 100),
}
_ROW_BYTES = 3 * 32 * 32


def expected_layout(dataset: str) -> str:
    layout = _LAYOUTS[dataset]
    return f"<root>/{layout.folder}/{', '.join(n for ns in layout.files.values() for n in ns)}"


def find_dir(root: Path, dataset: str) -> Path | None:
    """root/<batches folder>, or root itself when it is the batches folder."""
    layout = _LAYOUTS[dataset]
    if (root / layout.folder).is_dir():
        return root / layout.folder
    batch_names = [name for names in layout.files.values() for name in names]
    if root.name == layout.folder or any((root / name).is_file() for name in batch_names):
        return root
    return None


def read_split(dataset: str, directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N,3,32,32, int64 N) of a split's batches in `directory`."""
    layout = _LAYOUTS[dataset]
    batches = [_read_batch(dataset, directory / name, layout) for name in layout.files[split]]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return images, labels


def download(dataset: str, root: Path) -> None:
    import torchvision.datasets as tv_datasets
    from torchvision.datasets.utils import download_and_extract_archive

    # Only the md5-checked archive: torchvision's CIFAR classes would plain-pickle.load it.
    source = tv_datasets.CIFAR10 if dataset == "cifar10" else tv_datasets.CIFAR100
    download_and_extract_archive(source.url, str(root), filename=source.filename, md5=source.tgz_md5)


def _read_batch(dataset: str, path: Path, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{dataset} data in {path.parent} is incomplete: {path.name} is missing. "
                        f"{how_to_get(dataset)}")
    batch = _unpickle_batch(dataset, path)
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict. "
                        f"{how_to_get(dataset)}")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    data = batch.get("data")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _ROW_BYTES):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {found}. "
                        f"{how_to_get(dataset)}")
    labels = _as_label_array(batch.get(layout.label_key))
    if labels is None or labels.shape != (len(data),):
        raise DataError(f"{path}: '{layout.label_key}' must list one integer label per image "
                        f"({len(data)}). {how_to_get(dataset)}")
    check_label_range(dataset, labels, layout.num_classes, path)
    return data.reshape(-1, 3, 32, 32), labels


def _as_label_array(labels: Any) -> np.ndarray | None:
    if not isinstance(labels, (list, tuple, np.ndarray)):
        return None
    try:
        array = np.asarray(labels)
    except (TypeError, ValueError):
        return None
    if array.ndim != 1 or (len(array) and not np.issubdtype(array.dtype, np.integer)):
        return None
    return array.astype(np.int64)


def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only callables a CIFAR batch needs: rebuilding numpy arrays (py2 and py3 pickles)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
        ("codecs", "encode"): codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches and refuses every global but numpy array reconstruction."""

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file, encoding="latin1")  # the official batches are Python 2 pickles
        self._source = source
        self._allowed = _allowed_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        allowed = self._allowed.get((module, name))
        if allowed is None:
            raise DataError(f"refusing to unpickle {module}.{name} from {self._source}: not a CIFAR "
                            f"batch. Delete the file and use the official archive from "
                            f"https://www.cs.toronto.edu/~kriz/cifar.html")
        return allowed


def _unpickle_batch(dataset: str, path: Path) -> Any:
    with path.open("rb") as file:
        try:
            return _BatchUnpickler(file, path).load()
        except DataError:
            raise
        except Exception as error:  # a damaged pickle can fail in many ways
            raise DataError(f"cannot read {path} ({type(error).__name__}: {error}): damaged or not a "
                            f"CIFAR python batch. {how_to_get(dataset)}") from error
