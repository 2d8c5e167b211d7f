"""benchmark.data: real on-disk formats written to tmp_path and read through the public functions."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
import re
import struct
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.datasets.utils
from PIL import Image

from benchmark import data
from benchmark.data import (
    DataError,
    imagenet,
    load_evaluation_set,
    load_training_tensors,
    resolve_data_root,
    roots,
)
from benchmark.paths import RESOURCES_DIR as RESOURCES

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TINY_IMAGENET_PREPROCESSING = {"resize": 8, "crop": 6, "interpolation": "bilinear"}


@pytest.fixture(autouse=True)
def isolated_roots(tmp_path, monkeypatch):
    """No env root, a private cache, and no Debian Fashion-MNIST unless a test puts one there."""
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    monkeypatch.delenv("THREATBENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(roots, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-package")


# ------------------------------------------------------------------------------ writers


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    content = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content)
    path.write_bytes(content)
    return path


def mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_mnist_dir(directory: Path, seed: int = 0, gz: bool = True, n_test: int = 20,
                    n_train: int = 30) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    splits = {"t10k": mnist_arrays(n_test, seed), "train": mnist_arrays(n_train, seed + 1000)}
    for prefix, (images, labels) in splits.items():
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return splits


def cifar_batch(n: int, seed: int, label_key: str, num_classes: int) -> dict:
    rng = np.random.default_rng(seed)
    batch = {
        "batch_label": f"batch {seed}",
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        "filenames": [f"img_{seed}_{i}.png" for i in range(n)],
    }
    if label_key == "fine_labels":
        batch["coarse_labels"] = [int(v) for v in rng.integers(0, 20, n)]
    return batch


def write_pickle(path: Path, obj: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        pickle.dump(obj, file, protocol=protocol)


def write_cifar10(root: Path, n_test: int = 20, n_train_batch: int = 4) -> dict[str, dict]:
    folder = root / "cifar-10-batches-py"
    batches = {"test_batch": cifar_batch(n_test, 0, "labels", 10)}
    batches |= {f"data_batch_{i}": cifar_batch(n_train_batch, i, "labels", 10) for i in range(1, 6)}
    for name, batch in batches.items():
        write_pickle(folder / name, batch)
    return batches


def write_cifar100(root: Path) -> dict[str, dict]:
    folder = root / "cifar-100-python"
    batches = {"test": cifar_batch(20, 7, "fine_labels", 100), "train": cifar_batch(12, 8, "fine_labels", 100)}
    for name, batch in batches.items():
        write_pickle(folder / name, batch)
    return batches


def cifar_images(batch: dict) -> np.ndarray:
    return batch["data"].reshape(-1, 3, 32, 32)


def write_jpeg(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), color).save(path, "JPEG", quality=95)


def write_val_tree(class_root: Path, files: dict[str, str], color=(200, 40, 90)) -> None:
    for name, wnid in files.items():
        write_jpeg(class_root / wnid / name, color)


def synset_label(wnid: str) -> int:
    return data.imagenet_synsets().index(wnid)


# ------------------------------------------------------------------------------ idx (MNIST family)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("torchvision_layout", [False, True])
def test_idx_round_trip_in_both_layouts(tmp_path, gz, torchvision_layout):
    directory = tmp_path / "MNIST" / "raw" if torchvision_layout else tmp_path
    images, labels = write_mnist_dir(directory, gz=gz)["t10k"]

    subset = load_evaluation_set("mnist", 20, tmp_path, download=False)

    assert len(subset) == subset.n == 20 and subset.dataset == "mnist"
    x, y = subset[3]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
    assert torch.equal(x, torch.from_numpy(images[3]).float().div(255).unsqueeze(0))
    assert y == int(labels[3])
    assert subset.labels.dtype == torch.int64
    assert subset.labels.tolist() == labels.tolist()


def test_first_n_rule_and_sha256(tmp_path):
    images, labels = write_mnist_dir(tmp_path)["t10k"]

    subset = load_evaluation_set("mnist", 5, tmp_path, download=False)

    assert subset.labels.tolist() == labels[:5].tolist()
    assert torch.equal(subset[4][0][0], torch.from_numpy(images[4]).float() / 255)
    expected = hashlib.sha256(images[:5].tobytes() + labels[:5].astype("<i8").tobytes()).hexdigest()
    assert subset.sha256 == expected
    assert load_evaluation_set("mnist", 6, tmp_path, download=False).sha256 != expected


def test_sha256_is_stable_across_layouts_and_changes_with_the_data(tmp_path):
    write_mnist_dir(tmp_path / "gz", seed=3, gz=True)
    write_mnist_dir(tmp_path / "plain" / "FashionMNIST" / "raw", seed=3, gz=False)
    from_gz = load_evaluation_set("fashion-mnist", 10, tmp_path / "gz", download=False)
    from_plain = load_evaluation_set("fashion-mnist", 10, tmp_path / "plain", download=False)
    assert from_gz.sha256 == from_plain.sha256

    images, labels = mnist_arrays(20, 3)
    images[9, 0, 0] ^= 1
    write_idx(tmp_path / "gz" / "t10k-images-idx3-ubyte", images, gz=True)
    assert load_evaluation_set("fashion-mnist", 10, tmp_path / "gz", download=False).sha256 != from_gz.sha256

    images, labels = mnist_arrays(20, 3)
    labels[0] = (labels[0] + 1) % 10
    write_idx(tmp_path / "plain" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte", labels, gz=False)
    assert load_evaluation_set("fashion-mnist", 10, tmp_path / "plain", download=False).sha256 != from_gz.sha256


def test_evaluation_set_behaves_like_a_dataset(tmp_path):
    write_mnist_dir(tmp_path)
    subset = load_evaluation_set("mnist", 8, tmp_path, download=False)
    with pytest.raises(IndexError):
        subset[8]
    with pytest.raises(IndexError):
        subset[-1]
    xs, ys = next(iter(torch.utils.data.DataLoader(subset, batch_size=8)))
    assert xs.shape == (8, 1, 28, 28) and ys.tolist() == subset.labels.tolist()
    assert 0.0 <= xs.min() and xs.max() <= 1.0


def test_training_tensors_from_idx(tmp_path):
    images, labels = write_mnist_dir(tmp_path / "MNIST" / "raw", gz=False)["train"]
    x, y = load_training_tensors("mnist", tmp_path, download=False)
    assert x.shape == (30, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], torch.from_numpy(images).float() / 255)
    assert y.tolist() == labels.tolist()
    x, y = load_training_tensors("mnist", tmp_path, download=False, limit=7)
    assert x.shape[0] == 7 and y.tolist() == labels[:7].tolist()


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def damage_remove_labels(directory: Path) -> str:
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    return "t10k-labels-idx1-ubyte"


def damage_truncate_plain_images(directory: Path) -> str:
    path = directory / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.unlink()
    (directory / "t10k-images-idx3-ubyte").write_bytes(raw[:-10])
    return "t10k-images-idx3-ubyte"


def damage_truncate_gzip(directory: Path) -> str:
    path = directory / "t10k-images-idx3-ubyte.gz"
    truncate(path, len(path.read_bytes()) // 2)
    return "t10k-images-idx3-ubyte.gz"


def damage_wrong_magic(directory: Path) -> str:
    path = directory / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[3] = 3
    path.write_bytes(gzip.compress(bytes(raw)))
    return "t10k-labels-idx1-ubyte.gz"


def damage_label_count(directory: Path) -> str:
    write_idx(directory / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8), gz=True)
    return "t10k-labels-idx1-ubyte.gz"


def damage_image_size(directory: Path) -> str:
    write_idx(directory / "t10k-images-idx3-ubyte", np.zeros((20, 27, 28), np.uint8), gz=True)
    return "t10k-images-idx3-ubyte.gz"


def damage_label_range(directory: Path) -> str:
    write_idx(directory / "t10k-labels-idx1-ubyte", np.full(20, 10, np.uint8), gz=True)
    return "t10k-labels-idx1-ubyte.gz"


@pytest.mark.parametrize("damage", [
    damage_remove_labels, damage_truncate_plain_images, damage_truncate_gzip, damage_wrong_magic,
    damage_label_count, damage_image_size, damage_label_range,
])
def test_incomplete_idx_directory_names_the_file_and_the_source(tmp_path, damage):
    write_mnist_dir(tmp_path)
    bad_file = damage(tmp_path)
    with pytest.raises(DataError) as caught:
        load_evaluation_set("fashion-mnist", 5, tmp_path, download=False)
    message = str(caught.value)
    assert bad_file in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_more_examples_than_the_split_has(tmp_path):
    write_mnist_dir(tmp_path)
    with pytest.raises(DataError, match="n=21 .* only 20"):
        load_evaluation_set("mnist", 21, tmp_path, download=False)


@pytest.mark.parametrize("bad_n", [0, -1, 2.0, True])
def test_bad_n(tmp_path, bad_n):
    write_mnist_dir(tmp_path)
    with pytest.raises(DataError, match="positive integer"):
        load_evaluation_set("mnist", bad_n, tmp_path, download=False)


def test_unknown_dataset():
    with pytest.raises(DataError, match="cifar10"):
        load_evaluation_set("svhn", 10, download=False)


# ------------------------------------------------------------------------------ data roots


def test_data_dir_argument_beats_environment(tmp_path, monkeypatch):
    from_arg = write_mnist_dir(tmp_path / "arg", seed=1)["t10k"]
    write_mnist_dir(tmp_path / "env", seed=2)
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "env"))
    assert resolve_data_root("mnist", tmp_path / "arg") == tmp_path / "arg"
    subset = load_evaluation_set("mnist", 20, tmp_path / "arg", download=False)
    assert subset.labels.tolist() == from_arg[1].tolist()


def test_environment_beats_debian_package(tmp_path, monkeypatch):
    from_env = write_mnist_dir(tmp_path / "env", seed=2)["t10k"]
    write_mnist_dir(tmp_path / "debian", seed=3)
    monkeypatch.setattr(roots, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "env"))
    assert resolve_data_root("fashion-mnist", None) == tmp_path / "env"
    subset = load_evaluation_set("fashion-mnist", 20, download=False)
    assert subset.labels.tolist() == from_env[1].tolist()


def test_debian_package_is_used_for_fashion_mnist_only(tmp_path, monkeypatch):
    from_debian = write_mnist_dir(tmp_path / "debian", seed=3)["t10k"]
    monkeypatch.setattr(roots, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    assert resolve_data_root("fashion-mnist", None) == tmp_path / "debian"
    assert resolve_data_root("mnist", None) == tmp_path / "xdg-cache" / "threatbench" / "data"
    subset = load_evaluation_set("fashion-mnist", 20, download=False)
    assert subset.labels.tolist() == from_debian[1].tolist()


def test_cache_root_respects_xdg_cache_home(tmp_path, monkeypatch):
    assert resolve_data_root("cifar10", None) == tmp_path / "xdg-cache" / "threatbench" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root("cifar10", None) == tmp_path / "home" / ".cache" / "threatbench" / "data"


def test_the_data_cache_is_under_threatbench_cache_like_every_other_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THREATBENCH_CACHE", str(tmp_path / "one-root"))
    assert resolve_data_root("cifar10", None) == tmp_path / "one-root" / "data"


def test_missing_imagenet_is_blamed_on_imagenet_not_on_other_downloads(tmp_path):
    """The download cache holds other datasets' folders (FashionMNIST/, ...): without a named root,
    ImageNet is looked for in <cache>/data/imagenet only, and the error says that."""
    (tmp_path / "xdg-cache" / "threatbench" / "data" / "FashionMNIST").mkdir(parents=True)
    with pytest.raises(DataError) as error:
        load_evaluation_set("imagenet", 1, download=False)
    message = str(error.value)
    assert "FashionMNIST" not in message and "synsets" not in message
    assert "no ImageNet data directory was given (--data-dir or THREATBENCH_DATA)" in message
    assert str(tmp_path / "xdg-cache" / "threatbench" / "data" / "imagenet") in message


def test_missing_imagenet_names_imagenet_under_threatbench_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THREATBENCH_CACHE", str(tmp_path / "one-root"))
    (tmp_path / "one-root" / "data" / "FashionMNIST" / "raw").mkdir(parents=True)
    with pytest.raises(DataError) as error:
        load_evaluation_set("imagenet", 1, download=False)
    message = str(error.value)
    assert "FashionMNIST" not in message and "Fashion-MNIST" not in message
    assert f"{tmp_path / 'one-root' / 'data' / 'imagenet'} does not exist" in message
    assert "ILSVRC2012_img_val.tar" in message


@pytest.mark.parametrize("named_by", ["argument", "environment"])
def test_named_root_without_the_data_does_not_fall_through(tmp_path, monkeypatch, named_by):
    write_mnist_dir(tmp_path / "debian")
    monkeypatch.setattr(roots, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    empty = tmp_path / "empty"
    empty.mkdir()
    data_dir = empty if named_by == "argument" else None
    if named_by == "environment":
        monkeypatch.setenv(data.DATA_ENV_VAR, str(empty))
    with pytest.raises(DataError, match="does not contain fashion-mnist") as caught:
        load_evaluation_set("fashion-mnist", 5, data_dir, download=True)
    assert str(empty) in str(caught.value)
    assert "FashionMNIST/raw" in str(caught.value)


def test_named_root_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_evaluation_set("cifar10", 5, tmp_path / "nowhere", download=False)


def test_empty_cache_without_download_explains_the_options():
    with pytest.raises(DataError) as caught:
        load_evaluation_set("mnist", 5, download=False)
    message = str(caught.value)
    assert "download=False" in message and "--data-dir" in message and data.DATA_ENV_VAR in message


def test_data_already_in_the_cache_is_used_without_download(tmp_path):
    cache_raw = tmp_path / "xdg-cache" / "threatbench" / "data" / "MNIST" / "raw"
    images, labels = write_mnist_dir(cache_raw, gz=False)["t10k"]
    subset = load_evaluation_set("mnist", 20, download=False)
    assert subset.labels.tolist() == labels.tolist()


def test_download_goes_to_the_cache_and_is_read_back(tmp_path, monkeypatch):
    calls = []

    def fake_mnist(root, train, download):
        calls.append(Path(root))
        write_mnist_dir(Path(root) / "MNIST" / "raw", seed=5)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    subset = load_evaluation_set("mnist", 20, download=True)
    assert calls == [tmp_path / "xdg-cache" / "threatbench" / "data"]
    assert subset.labels.tolist() == mnist_arrays(20, 5)[1].tolist()


def test_failed_mnist_download_says_how_to_get_it(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match="could not download fashion-mnist") as caught:
        load_evaluation_set("fashion-mnist", 5, download=True)
    assert "zalandoresearch/fashion-mnist" in str(caught.value)


def test_failed_cifar_download_says_how_to_get_it(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="could not download cifar100") as caught:
        load_training_tensors("cifar100", download=True)
    assert "cifar-100-python.tar.gz" in str(caught.value)


@pytest.mark.skipif(not (REAL_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST data not installed (apt-get install dataset-fashion-mnist)")
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.setattr(roots, "DEBIAN_FASHION_MNIST_DIR", REAL_FASHION_MNIST)
    subset = load_evaluation_set("fashion-mnist", 100, download=False)
    assert len(subset) == 100
    assert subset.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    x, _ = subset[0]
    assert x.shape == (1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert subset.sha256 == "afcf4aafd5e9a8d54c2fe359d97ecd42ef638529eed4c56d0323c04a2820baa7"


# ------------------------------------------------------------------------------ CIFAR


def test_cifar10_round_trip(tmp_path):
    batches = write_cifar10(tmp_path)
    test = batches["test_batch"]
    subset = load_evaluation_set("cifar10", 12, tmp_path, download=False)
    x, y = subset[11]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(cifar_images(test)[11]).float() / 255)
    assert y == test["labels"][11]
    assert subset.labels.tolist() == test["labels"][:12]
    assert subset.sha256 == data.subset_sha256(cifar_images(test)[:12], np.array(test["labels"][:12]))


def test_cifar10_training_concatenates_batches_in_order(tmp_path):
    batches = write_cifar10(tmp_path)
    x, y = load_training_tensors("cifar10", tmp_path, download=False)
    expected_images = np.concatenate([cifar_images(batches[f"data_batch_{i}"]) for i in range(1, 6)])
    expected_labels = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert x.shape == (20, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(expected_images).float() / 255)
    assert y.tolist() == expected_labels
    assert load_training_tensors("cifar10", tmp_path, download=False, limit=6)[1].tolist() == expected_labels[:6]


def test_cifar100_uses_fine_labels(tmp_path):
    batches = write_cifar100(tmp_path)
    subset = load_evaluation_set("cifar100", 20, tmp_path, download=False)
    assert subset.labels.tolist() == batches["test"]["fine_labels"]
    x, y = load_training_tensors("cifar100", tmp_path, download=False)
    assert y.tolist() == batches["train"]["fine_labels"]
    assert torch.equal(x, torch.from_numpy(cifar_images(batches["train"])).float() / 255)


def test_root_may_be_the_batches_folder(tmp_path):
    batches = write_cifar10(tmp_path)
    subset = load_evaluation_set("cifar10", 20, tmp_path / "cifar-10-batches-py", download=False)
    assert subset.labels.tolist() == batches["test_batch"]["labels"]


def test_python2_style_pickle_names_are_accepted(tmp_path):
    batch = cifar_batch(20, 0, "labels", 10)
    batch = {key.encode(): value for key, value in batch.items()}  # Python 2 str keys
    pickled = pickle.dumps(batch, protocol=2)
    pickled = pickled.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct" in pickled
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickled)
    subset = load_evaluation_set("cifar10", 20, tmp_path, download=False)
    assert subset.labels.tolist() == batch[b"labels"]
    assert torch.equal(subset[0][0], torch.from_numpy(batch[b"data"][0].reshape(3, 32, 32)).float() / 255)


class RunsAShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    batch = cifar_batch(20, 0, "labels", 10)
    batch["data"] = RunsAShellCommand(marker)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", batch)
    with pytest.raises(DataError, match=r"refusing to unpickle \w+\.system from .*test_batch: not a CIFAR batch"):
        load_evaluation_set("cifar10", 5, tmp_path, download=False)
    assert not marker.exists()


def test_pickled_builtins_are_refused(tmp_path):
    write_pickle(tmp_path / "cifar-100-python" / "test", {"data": print, "fine_labels": []})
    with pytest.raises(DataError, match="refusing to unpickle builtins.print"):
        load_evaluation_set("cifar100", 5, tmp_path, download=False)


def damage_remove_test_batch(folder: Path) -> str:
    (folder / "test_batch").unlink()
    return "test_batch is missing"


def damage_wrong_row_size(folder: Path) -> str:
    batch = cifar_batch(20, 0, "labels", 10)
    batch["data"] = batch["data"][:, :3071]
    write_pickle(folder / "test_batch", batch)
    return "(N, 3072)"


def damage_label_length(folder: Path) -> str:
    batch = cifar_batch(20, 0, "labels", 10)
    batch["labels"] = batch["labels"][:19]
    write_pickle(folder / "test_batch", batch)
    return "'labels' must list one integer label per image"


def damage_not_a_dict(folder: Path) -> str:
    write_pickle(folder / "test_batch", [1, 2, 3])
    return "not a CIFAR batch dict"


def damage_garbage_bytes(folder: Path) -> str:
    (folder / "test_batch").write_bytes(b"this is not a pickle")
    return "cannot read"


def damage_truncated_pickle(folder: Path) -> str:
    truncate(folder / "test_batch", 1000)
    return "cannot read"


@pytest.mark.parametrize("damage", [
    damage_remove_test_batch, damage_wrong_row_size, damage_label_length, damage_not_a_dict,
    damage_garbage_bytes, damage_truncated_pickle,
])
def test_incomplete_cifar_directory(tmp_path, damage):
    write_cifar10(tmp_path)
    expected = damage(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError) as caught:
        load_evaluation_set("cifar10", 5, tmp_path, download=False)
    message = str(caught.value)
    assert expected in message and "test_batch" in message
    assert "cifar-10-python.tar.gz" in message


def test_missing_training_batch_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 is missing"):
        load_training_tensors("cifar10", tmp_path, download=False)


def test_imagenet_is_not_for_training(tmp_path):
    with pytest.raises(DataError, match="not supported"):
        load_training_tensors("imagenet", tmp_path, download=False)


# ------------------------------------------------------------------------------ ImageNet resources


def test_committed_subset_list_matches_its_pinned_sha256():
    content = (RESOURCES / "imagenet_val_subset.txt").read_bytes()
    assert hashlib.sha256(content).hexdigest() == data.IMAGENET_SUBSET_SHA256
    names = content.decode("ascii").split("\n")
    assert names[-1] == "" and len(names) == 10_001
    names = names[:-1]
    assert len(set(names)) == 10_000
    assert all(re.fullmatch(r"ILSVRC2012_val_000\d{5}\.JPEG", name) for name in names)
    numbers = [int(name[15:23]) for name in names]
    assert min(numbers) >= 1 and max(numbers) <= 50_000
    assert numbers != sorted(numbers)  # draw order, not sorted
    assert data.imagenet_subset_file_names() == tuple(names)


def load_subset_script():
    spec = importlib.util.spec_from_file_location("make_imagenet_subset", RESOURCES / "make_imagenet_subset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_subset_script_reproduces_the_committed_list(tmp_path):
    assert load_subset_script().render_subset_list() == (RESOURCES / "imagenet_val_subset.txt").read_bytes()
    output = tmp_path / "regenerated.txt"
    subprocess.run([sys.executable, str(RESOURCES / "make_imagenet_subset.py"), "--output", str(output)],
                   check=True, capture_output=True)
    assert output.read_bytes() == (RESOURCES / "imagenet_val_subset.txt").read_bytes()


def test_synsets_are_the_pinned_sorted_1000_wnids():
    content = (RESOURCES / "imagenet_synsets.txt").read_bytes()
    assert hashlib.sha256(content).hexdigest() == data.IMAGENET_SYNSETS_SHA256
    synsets = data.imagenet_synsets()
    assert len(synsets) == len(set(synsets)) == 1000
    assert list(synsets) == sorted(synsets)
    assert synsets[0] == "n01440764" and synsets[-1] == "n15075141"


def test_modified_subset_list_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(imagenet, "IMAGENET_SUBSET_SHA256", "0" * 64)
    with pytest.raises(DataError, match="imagenet_val_subset.txt has sha256 .* was modified"):
        load_evaluation_set("imagenet", 2, tmp_path, download=False)


# ------------------------------------------------------------------------------ ImageNet loading

FIRST = data.imagenet_subset_file_names()[:4]
WNIDS = ("n15075141", "n01440764", "n09468604", "n01440764")
FIRST_FOUR_IN_FOLDERS = dict(zip(FIRST, WNIDS, strict=True))


@pytest.mark.parametrize("with_val_folder", [True, False])
def test_imagenet_labels_follow_synset_order_not_the_folders_present(tmp_path, with_val_folder):
    class_root = tmp_path / "val" if with_val_folder else tmp_path
    write_val_tree(class_root, FIRST_FOUR_IN_FOLDERS, color=(200, 40, 90))
    (class_root / "n01443537").mkdir()  # extra, empty class folder
    write_jpeg(class_root / "n01443537" / "ILSVRC2012_val_99999999.JPEG", (0, 0, 0))  # not in the list
    (class_root / ".cache").mkdir()  # hidden folders are ignored

    subset = load_evaluation_set("imagenet", 4, tmp_path, imagenet_preprocessing=TINY_IMAGENET_PREPROCESSING)

    # scandir-and-sort of the four folders present would give labels 3, 0, 2, 0
    assert subset.labels.tolist() == [999, 0, synset_label("n09468604"), 0]
    assert subset.sha256 == data.IMAGENET_SUBSET_SHA256 and subset.dataset == "imagenet"
    x, y = subset[0]
    assert x.shape == (3, 6, 6) and x.dtype == torch.float32 and y == 999
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor([200, 40, 90]) / 255, atol=0.03)


def test_imagenet_default_preprocessing_is_299_crop(tmp_path):
    write_val_tree(tmp_path / "val", {FIRST[0]: WNIDS[0]})
    subset = load_evaluation_set("imagenet", 1, tmp_path)
    x, _ = subset[0]
    assert x.shape == (3, 299, 299) and 0.0 <= x.min() and x.max() <= 1.0


def test_imagenet_set_survives_pickling_for_dataloader_workers(tmp_path):
    write_val_tree(tmp_path / "val", FIRST_FOUR_IN_FOLDERS)
    subset = load_evaluation_set("imagenet", 4, tmp_path, imagenet_preprocessing=TINY_IMAGENET_PREPROCESSING)
    copy = pickle.loads(pickle.dumps(subset))
    assert torch.equal(copy[2][0], subset[2][0]) and copy.labels.tolist() == subset.labels.tolist()


def test_imagenet_missing_subset_files_are_counted_and_named(tmp_path):
    write_val_tree(tmp_path / "val", dict(zip(FIRST[:2], WNIDS[:2], strict=True)))
    with pytest.raises(DataError, match="2 of the first 4 images") as caught:
        load_evaluation_set("imagenet", 4, tmp_path)
    assert FIRST[2] in str(caught.value) and FIRST[3] in str(caught.value)
    assert "image-net.org" in str(caught.value)


def test_imagenet_folder_that_is_not_a_synset(tmp_path):
    write_val_tree(tmp_path / "val", FIRST_FOUR_IN_FOLDERS)
    (tmp_path / "val" / "n99999999").mkdir()
    with pytest.raises(DataError, match="n99999999 is not one of the 1000 ImageNet-1k synsets"):
        load_evaluation_set("imagenet", 4, tmp_path)


def test_imagenet_flat_validation_folder(tmp_path):
    for name in FIRST:
        write_jpeg(tmp_path / "val" / name, (1, 2, 3))
    with pytest.raises(DataError, match="without class folders"):
        load_evaluation_set("imagenet", 4, tmp_path)


def test_imagenet_duplicate_file_is_ambiguous(tmp_path):
    write_val_tree(tmp_path / "val", FIRST_FOUR_IN_FOLDERS)
    write_jpeg(tmp_path / "val" / "n01443537" / FIRST[0], (1, 2, 3))
    with pytest.raises(DataError, match="ambiguous"):
        load_evaluation_set("imagenet", 4, tmp_path)


def test_imagenet_without_a_data_dir_says_how_to_obtain_it():
    with pytest.raises(DataError, match="cannot be downloaded automatically"):
        load_evaluation_set("imagenet", 4)


def test_imagenet_damaged_image_is_named(tmp_path):
    write_val_tree(tmp_path / "val", FIRST_FOUR_IN_FOLDERS)
    truncate(tmp_path / "val" / WNIDS[1] / FIRST[1], 20)
    subset = load_evaluation_set("imagenet", 4, tmp_path, imagenet_preprocessing=TINY_IMAGENET_PREPROCESSING)
    with pytest.raises(DataError, match=FIRST[1]):
        subset[1]


@pytest.mark.parametrize("preprocessing, complaint", [
    ({"resize": 8, "scale": 2}, "unknown imagenet preprocessing keys"),
    ({"crop": 0}, "crop must be a positive integer"),
    ({"interpolation": "nearest"}, "interpolation 'nearest' is not supported"),
])
def test_imagenet_bad_preprocessing(tmp_path, preprocessing, complaint):
    write_val_tree(tmp_path / "val", {FIRST[0]: WNIDS[0]})
    with pytest.raises(DataError, match=complaint):
        load_evaluation_set("imagenet", 1, tmp_path, imagenet_preprocessing=preprocessing)


def test_imagenet_subset_size_limit(tmp_path):
    with pytest.raises(DataError, match="n <= 10000"):
        load_evaluation_set("imagenet", 10_001, tmp_path)
