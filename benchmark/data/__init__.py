"""The fixed evaluation subsets and the training splits of every benchmark dataset.

Evaluation subset = the first n examples of the test split (ImageNet: the first n names of the
committed list `resources/imagenet_val_subset.txt`). Its identity is `EvaluationSet.sha256`.

Data roots are tried in this order: the `data_dir` argument (CLI --data-dir), the environment
variable THREATBENCH_DATA, for fashion-mnist the Debian package's /usr/share/datasets/fashion-mnist,
and last the download cache ~/.cache/threatbench/data (XDG_CACHE_HOME is respected), where
torchvision downloads when `download=True`. A root the user named is never silently skipped.

Files are parsed here, strictly: idx files with numpy, CIFAR pickles with an unpickler that only
rebuilds numpy arrays. Every problem a user can fix raises `DataError` with what is wrong and how
to get the data.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import hashlib
import operator
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from benchmark.errors import ThreatbenchError

DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet")

DATA_ENV_VAR = "THREATBENCH_DATA"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

IMAGENET_SUBSET_FILE = "imagenet_val_subset.txt"
IMAGENET_SUBSET_SIZE = 10_000
IMAGENET_SUBSET_SHA256 = "9c9c7cb93c130a0dccf38ccbc36472ac7ab754150fa7d41b499bef2de0fc14d3"
IMAGENET_SYNSETS_FILE = "imagenet_synsets.txt"
IMAGENET_SYNSETS_SHA256 = "70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15"
DEFAULT_IMAGENET_PREPROCESSING = {"resize": 341, "crop": 299, "interpolation": "bicubic"}

_INTERPOLATIONS = {
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "bilinear": transforms.InterpolationMode.BILINEAR,
}

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


def _how_to_get(dataset: str) -> str:
    return f"{_HOW_TO_OBTAIN[dataset]}; {_HOW_TO_POINT}."


# ------------------------------------------------------------------------------ evaluation set


@dataclass(frozen=True, eq=False)
class EvaluationSet(Dataset):
    """The first n examples of a dataset's evaluation split; item i is (x CHW float32 in [0,1], y)."""

    dataset: str
    n: int
    sha256: str
    labels: torch.Tensor = field(repr=False)
    image_loader: Callable[[int], torch.Tensor] = field(repr=False)

    def __post_init__(self) -> None:
        if self.labels.shape != (self.n,) or self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 of shape ({self.n},), got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        position = operator.index(index)
        if not 0 <= position < self.n:
            raise IndexError(f"example index {position} out of range 0..{self.n - 1}")
        return self.image_loader(position), int(self.labels[position])


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).div_(255.0)


@dataclass(frozen=True, eq=False)
class _InMemoryImages:
    images: torch.Tensor  # uint8 N,C,H,W

    def __call__(self, index: int) -> torch.Tensor:
        return _to_unit_float(self.images[index])


@dataclass(frozen=True, eq=False)
class _ImageFiles:
    """Decodes one image file per item, so a 10,000-image ImageNet subset stays on disk."""

    paths: tuple[str, ...]
    transform: Callable[[Image.Image], torch.Tensor]

    def __call__(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"cannot decode {path} ({error}): the file is damaged; "
                            f"extract it again from ILSVRC2012_img_val.tar") from error
        return self.transform(rgb)


# ------------------------------------------------------------------------------ public API


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
        return _load_imagenet_subset(n, data_dir, imagenet_preprocessing)
    images, labels = _load_split(dataset, "test", data_dir, download)
    if n > len(labels):
        raise DataError(f"n={n} examples requested but the {dataset} test split has only "
                        f"{len(labels)}; use n <= {len(labels)}")
    images, labels = images[:n], labels[:n]
    return EvaluationSet(
        dataset=dataset,
        n=n,
        sha256=subset_sha256(images, labels),
        labels=torch.from_numpy(labels),
        image_loader=_InMemoryImages(torch.from_numpy(images)),
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
    images, labels = _load_split(dataset, "train", data_dir, download)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return _to_unit_float(torch.from_numpy(images)), torch.from_numpy(labels)


def resolve_data_root(dataset: str, data_dir: str | os.PathLike[str] | None) -> Path:
    """The root `dataset` is read from: data_dir, THREATBENCH_DATA, Debian (fashion-mnist), cache."""
    _check_dataset(dataset)
    return _locate_root(dataset, data_dir).path


def default_cache_dir() -> Path:
    """Where downloads go: <the threatbench cache>/data (benchmark.runtime.cache: $THREATBENCH_CACHE, else
    $XDG_CACHE_HOME/threatbench, else ~/.cache/threatbench), one root for data, weights and examples."""
    from benchmark.runtime.cache import cache_dir

    return cache_dir() / "data"


def subset_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over the raw uint8 image bytes (N,C,H,W, C order) then the labels as int64 LE."""
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in label order (sorted), from the pinned resource file."""
    text = _read_pinned_resource(IMAGENET_SYNSETS_FILE, IMAGENET_SYNSETS_SHA256).decode("ascii")
    return tuple(text.split())


def imagenet_subset_file_names() -> tuple[str, ...]:
    """The committed 10,000 validation file names, in subset order."""
    text = _read_pinned_resource(IMAGENET_SUBSET_FILE, IMAGENET_SUBSET_SHA256).decode("ascii")
    return tuple(text.split())


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")


# ------------------------------------------------------------------------------ data roots


@dataclass(frozen=True)
class _DataRoot:
    path: Path
    origin: str
    named_by_user: bool  # a root the user named is used or reported, never skipped
    downloads_here: bool = False


def _locate_root(dataset: str, data_dir: str | os.PathLike[str] | None) -> _DataRoot:
    if data_dir is not None:
        return _DataRoot(Path(data_dir).expanduser(), "the data_dir argument (--data-dir)", True)
    from_env = os.environ.get(DATA_ENV_VAR, "")
    if from_env:
        return _DataRoot(Path(from_env).expanduser(), f"the {DATA_ENV_VAR} environment variable", True)
    if dataset == "fashion-mnist" and _find_idx_dir(DEBIAN_FASHION_MNIST_DIR, dataset) is not None:
        return _DataRoot(DEBIAN_FASHION_MNIST_DIR, "the Debian package dataset-fashion-mnist", False)
    return _DataRoot(default_cache_dir(), "the download cache", False, downloads_here=True)


def _not_found_error(dataset: str, root: _DataRoot, layout: str, download: bool) -> DataError:
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
    return DataError(f"{problem}; expected {layout}. {_how_to_get(dataset)}")


def _load_split(dataset: str, split: str, data_dir: Any, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N,C,H,W, int64 N) of a split, downloading into the cache if allowed and needed."""
    root = _locate_root(dataset, data_dir)
    read = _read_idx_split if dataset in _IDX_SUBDIRS else _read_cifar_split
    try:
        return read(dataset, root, split, download)
    except DataError:
        if not (download and root.downloads_here):
            raise
    _download(dataset, root.path)
    return read(dataset, root, split, download)


def _download(dataset: str, root: Path) -> None:
    import torchvision.datasets as tv_datasets

    try:
        root.mkdir(parents=True, exist_ok=True)
        if dataset in _IDX_SUBDIRS:
            getattr(tv_datasets, _IDX_SUBDIRS[dataset])(str(root), train=False, download=True)
        else:
            # Only the md5-checked archive: torchvision's CIFAR classes would plain-pickle.load it.
            source = tv_datasets.CIFAR10 if dataset == "cifar10" else tv_datasets.CIFAR100
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(source.url, str(root), filename=source.filename,
                                         md5=source.tgz_md5)
    except Exception as error:  # network, disk and checksum failures all end the same way
        raise DataError(f"could not download {dataset} into {root} ({type(error).__name__}: "
                        f"{error}). {_how_to_get(dataset)}") from error


# ------------------------------------------------------------------------------ idx (MNIST family)

_IDX_SUBDIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IDX_SPLIT_PREFIX = {"test": "t10k", "train": "train"}
_IDX_KINDS = ("images-idx3-ubyte", "labels-idx1-ubyte")
_IDX_UBYTE = 0x08
_MNIST_IMAGE_SHAPE = (28, 28)
_MNIST_CLASSES = 10


def _idx_layout(dataset: str) -> str:
    return (f"t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz], train-images-idx3-ubyte[.gz] "
            f"and train-labels-idx1-ubyte[.gz] directly in the root or in <root>/"
            f"{_IDX_SUBDIRS[dataset]}/raw/")


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _find_idx_dir(root: Path, dataset: str) -> Path | None:
    """The first of root, root/<MNIST|FashionMNIST>/raw holding any idx file of the dataset."""
    stems = [f"{prefix}-{kind}" for prefix in _IDX_SPLIT_PREFIX.values() for kind in _IDX_KINDS]
    for directory in (root, root / _IDX_SUBDIRS[dataset] / "raw"):
        if any(_idx_file(directory, stem) for stem in stems):
            return directory
    return None


def _read_idx_split(dataset: str, root: _DataRoot, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    directory = _find_idx_dir(root.path, dataset)
    if directory is None:
        raise _not_found_error(dataset, root, _idx_layout(dataset), download)
    prefix = _IDX_SPLIT_PREFIX[split]
    images_path = _require_idx_file(dataset, directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _require_idx_file(dataset, directory, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(dataset, images_path, ndim=3)
    labels = _read_idx(dataset, labels_path, ndim=1)
    if images.shape[1:] != _MNIST_IMAGE_SHAPE:
        raise DataError(f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, expected "
                        f"28x28: not a {dataset} file. {_how_to_get(dataset)}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
                        f"labels: the files do not belong together. {_how_to_get(dataset)}")
    _check_label_range(dataset, labels, _MNIST_CLASSES, labels_path)
    return images[:, None], labels.astype(np.int64)


def _require_idx_file(dataset: str, directory: Path, stem: str) -> Path:
    path = _idx_file(directory, stem)
    if path is None:
        raise DataError(f"{dataset} data in {directory} is incomplete: {stem}[.gz] is missing. "
                        f"{_how_to_get(dataset)}")
    return path


def _read_idx(dataset: str, path: Path, ndim: int) -> np.ndarray:
    """A uint8 idx file (gzip or plain) as an array, checking magic, dims and file length."""
    raw = _read_maybe_gzip(dataset, path)
    header_size = 4 + 4 * ndim
    if len(raw) < 4 or raw[:3] != bytes([0, 0, _IDX_UBYTE]) or raw[3] != ndim:
        raise DataError(f"{path} is not a uint8 idx{ndim} file (magic {raw[:4].hex() or 'empty'}, "
                        f"expected 0000080{ndim}). {_how_to_get(dataset)}")
    if len(raw) < header_size:
        raise DataError(f"{path} is truncated inside its header. {_how_to_get(dataset)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected_size = header_size + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected_size:
        raise DataError(f"{path} is truncated or damaged: its header announces shape {dims} "
                        f"({expected_size} bytes) but it has {len(raw)} bytes. {_how_to_get(dataset)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims).copy()


def _read_maybe_gzip(dataset: str, path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} is not a valid gzip file ({error}); it is probably a truncated "
                        f"download. {_how_to_get(dataset)}") from error


def _check_label_range(dataset: str, labels: np.ndarray, num_classes: int, path: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path} has labels outside 0..{num_classes - 1}: not a {dataset} file. "
                        f"{_how_to_get(dataset)}")


# ------------------------------------------------------------------------------ CIFAR


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    files: dict[str, tuple[str, ...]]
    label_key: str
    num_classes: int


_CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout(
        "cifar-10-batches-py",
        {"test": ("test_batch",), "train": tuple(f"data_batch_{i}" for i in range(1, 6))},
        "labels",
        10,
    ),
    "cifar100": _CifarLayout("cifar-100-python", {"test": ("test",), "train": ("train",)}, "fine_labels", 100),
}
_CIFAR_ROW_BYTES = 3 * 32 * 32


def _find_cifar_dir(root: Path, layout: _CifarLayout) -> Path | None:
    """root/<batches folder>, or root itself when it is the batches folder."""
    if (root / layout.folder).is_dir():
        return root / layout.folder
    batch_names = [name for names in layout.files.values() for name in names]
    if root.name == layout.folder or any((root / name).is_file() for name in batch_names):
        return root
    return None


def _read_cifar_split(dataset: str, root: _DataRoot, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    layout = _CIFAR_LAYOUTS[dataset]
    directory = _find_cifar_dir(root.path, layout)
    if directory is None:
        expected = f"<root>/{layout.folder}/{', '.join(n for ns in layout.files.values() for n in ns)}"
        raise _not_found_error(dataset, root, expected, download)
    batches = [_read_cifar_batch(dataset, directory / name, layout) for name in layout.files[split]]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return images, labels


def _read_cifar_batch(dataset: str, path: Path, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{dataset} data in {path.parent} is incomplete: {path.name} is missing. "
                        f"{_how_to_get(dataset)}")
    batch = _unpickle_cifar_batch(dataset, path)
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict. "
                        f"{_how_to_get(dataset)}")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    data = batch.get("data")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _CIFAR_ROW_BYTES):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {found}. "
                        f"{_how_to_get(dataset)}")
    labels = _as_label_array(batch.get(layout.label_key))
    if labels is None or labels.shape != (len(data),):
        raise DataError(f"{path}: '{layout.label_key}' must list one integer label per image "
                        f"({len(data)}). {_how_to_get(dataset)}")
    _check_label_range(dataset, labels, layout.num_classes, path)
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


class _CifarBatchUnpickler(pickle.Unpickler):
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


def _unpickle_cifar_batch(dataset: str, path: Path) -> Any:
    with path.open("rb") as file:
        try:
            return _CifarBatchUnpickler(file, path).load()
        except DataError:
            raise
        except Exception as error:  # a damaged pickle can fail in many ways
            raise DataError(f"cannot read {path} ({type(error).__name__}: {error}): damaged or not a "
                            f"CIFAR python batch. {_how_to_get(dataset)}") from error


# ------------------------------------------------------------------------------ ImageNet


def _read_pinned_resource(name: str, expected_sha256: str) -> bytes:
    try:
        content = (resources.files("benchmark") / "resources" / name).read_bytes()
    except OSError as error:
        raise DataError(f"package resource benchmark/resources/{name} is missing ({error}); "
                        f"reinstall threatbench") from error
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected_sha256:
        raise DataError(f"package resource benchmark/resources/{name} has sha256 {actual}, expected "
                        f"{expected_sha256}: the file was modified; restore it from the release "
                        f"(git checkout benchmark/resources/{name}) or reinstall threatbench")
    return content


def _imagenet_transform(preprocessing: Mapping[str, Any] | None) -> transforms.Compose:
    settings = dict(DEFAULT_IMAGENET_PREPROCESSING)
    unknown = set(preprocessing or {}) - set(settings)
    if unknown:
        raise DataError(f"unknown imagenet preprocessing keys {sorted(unknown)}; allowed: "
                        f"{', '.join(settings)}")
    settings.update(preprocessing or {})
    for key in ("resize", "crop"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"imagenet preprocessing {key} must be a positive integer, got {value!r}")
    if settings["interpolation"] not in _INTERPOLATIONS:
        raise DataError(f"imagenet preprocessing interpolation {settings['interpolation']!r} is not "
                        f"supported; use one of: {', '.join(_INTERPOLATIONS)}")
    return transforms.Compose([
        transforms.Resize(settings["resize"], interpolation=_INTERPOLATIONS[settings["interpolation"]],
                          antialias=True),
        transforms.CenterCrop(settings["crop"]),
        transforms.ToTensor(),
    ])


def _load_imagenet_subset(n: int, data_dir: Any, preprocessing: Mapping[str, Any] | None) -> EvaluationSet:
    if n > IMAGENET_SUBSET_SIZE:
        raise DataError(f"n={n} but the ImageNet evaluation subset has {IMAGENET_SUBSET_SIZE} images; "
                        f"use n <= {IMAGENET_SUBSET_SIZE}")
    transform = _imagenet_transform(preprocessing)
    names = imagenet_subset_file_names()[:n]
    label_of_wnid = {wnid: label for label, wnid in enumerate(imagenet_synsets())}
    class_root = _imagenet_class_root(_locate_root("imagenet", data_dir))
    located = _index_val_tree(class_root, set(names), label_of_wnid)
    missing = [name for name in names if name not in located]
    if missing:
        raise DataError(f"{len(missing)} of the first {n} images of the ImageNet evaluation subset are "
                        f"missing from {class_root} (first few: {', '.join(missing[:5])}); the subset "
                        f"needs the complete ILSVRC2012 validation set. {_how_to_get('imagenet')}")
    paths = tuple(str(located[name][0]) for name in names)
    labels = torch.tensor([label_of_wnid[located[name][1]] for name in names], dtype=torch.int64)
    return EvaluationSet("imagenet", n, IMAGENET_SUBSET_SHA256, labels, _ImageFiles(paths, transform))


def _imagenet_class_root(root: _DataRoot) -> Path:
    """<root>/val when it exists, else <root>: the folder holding the <wnid> folders. ImageNet is never
    downloaded, so without a root the user named it is looked for only in <cache>/imagenet (the
    cache itself holds the other datasets' downloads, which are not ImageNet class folders)."""
    if not root.named_by_user:
        root = dataclasses.replace(root, path=root.path / "imagenet")
    if not root.path.is_dir():
        raise _not_found_error("imagenet", root, "<root>/val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG", False)
    return root.path / "val" if (root.path / "val").is_dir() else root.path


def _index_val_tree(class_root: Path, wanted: set[str], label_of_wnid: Mapping[str, int]) -> dict[str, tuple[Path, str]]:
    """Walks <class_root>/<wnid>/ once: wanted file name -> (path, wnid of its folder)."""
    located: dict[str, tuple[Path, str]] = {}
    class_folders = 0
    has_loose_images = False
    with os.scandir(class_root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                has_loose_images = has_loose_images or entry.name.endswith(".JPEG")
                continue
            if entry.name not in label_of_wnid:
                raise DataError(f"folder {entry.path} is not one of the 1000 ImageNet-1k synsets: "
                                f"{class_root} must hold only <wnid> class folders (like n01440764). "
                                f"Move other folders out, or point to the folder holding the val "
                                f"class folders. {_how_to_get('imagenet')}")
            class_folders += 1
            _collect_wanted_files(Path(entry.path), entry.name, wanted, located)
    if class_folders == 0:
        if has_loose_images:
            raise DataError(f"{class_root} holds the validation images without class folders; sort "
                            f"them into <wnid> folders first (the file names carry no label). "
                            f"{_how_to_get('imagenet')}")
        raise DataError(f"{class_root} holds no ImageNet class folders; expected "
                        f"<root>/val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG. {_how_to_get('imagenet')}")
    return located


def _collect_wanted_files(folder: Path, wnid: str, wanted: set[str],
                          located: dict[str, tuple[Path, str]]) -> None:
    with os.scandir(folder) as files:
        for file in files:
            if file.name not in wanted:
                continue
            if file.name in located:
                raise DataError(f"{file.name} appears in two class folders, {located[file.name][1]} "
                                f"and {wnid}, under {folder.parent}: its label is ambiguous; keep one")
            located[file.name] = (Path(file.path), wnid)
