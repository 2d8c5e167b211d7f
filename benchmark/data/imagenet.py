"""ImageNet: the committed list of 10,000 validation images, read from <root>/val/<wnid>/ one
image file per item, labelled by the pinned synset order. ImageNet is never downloaded."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import transforms

from benchmark.data.errors import DataError, how_to_get
from benchmark.data.evaluation_set import EvaluationSet
from benchmark.data.roots import DataRoot, locate_root, not_found_error

IMAGENET_SUBSET_FILE = "imagenet_val_subset.txt"
IMAGENET_SUBSET_SIZE = 10_000
IMAGENET_SUBSET_SHA256 = "9c9c7cb93c130a0dccf38ccbc36472ac7ab754150fa7d41b499bef2de0fc14d3"
IMAGENET_SYNSETS_FILE = "imagenet_synsets.txt"
IMAGENET_SYNSETS_SHA256 = "70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15"
DEFAULT_IMAGENET_PREPROCESSING = {"resize": 341, "crop": 299, "interpolation": "bicubic"}
EXPECTED_LAYOUT = "<root>/val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG"

_INTERPOLATIONS = {
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "bilinear": transforms.InterpolationMode.BILINEAR,
}


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


def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in label order (sorted), from the pinned resource file."""
    text = _read_pinned_resource(IMAGENET_SYNSETS_FILE, IMAGENET_SYNSETS_SHA256).decode("ascii")
    return tuple(text.split())


def imagenet_subset_file_names() -> tuple[str, ...]:
    """The committed 10,000 validation file names, in subset order."""
    text = _read_pinned_resource(IMAGENET_SUBSET_FILE, IMAGENET_SUBSET_SHA256).decode("ascii")
    return tuple(text.split())


def load_imagenet_subset(n: int, data_dir: str | os.PathLike[str] | None,
                         preprocessing: Mapping[str, Any] | None) -> EvaluationSet:
    """The first n images of the committed list, labelled by the folder each one is found in."""
    if n > IMAGENET_SUBSET_SIZE:
        raise DataError(f"n={n} but the ImageNet evaluation subset has {IMAGENET_SUBSET_SIZE} images; "
                        f"use n <= {IMAGENET_SUBSET_SIZE}")
    transform = _transform(preprocessing)
    names = imagenet_subset_file_names()[:n]
    label_of_wnid = {wnid: label for label, wnid in enumerate(imagenet_synsets())}
    class_root = _class_root(locate_root("imagenet", data_dir))
    located = _index_val_tree(class_root, set(names), label_of_wnid)
    missing = [name for name in names if name not in located]
    if missing:
        raise DataError(f"{len(missing)} of the first {n} images of the ImageNet evaluation subset are "
                        f"missing from {class_root} (first few: {', '.join(missing[:5])}); the subset "
                        f"needs the complete ILSVRC2012 validation set. {how_to_get('imagenet')}")
    paths = tuple(str(located[name][0]) for name in names)
    labels = torch.tensor([label_of_wnid[located[name][1]] for name in names], dtype=torch.int64)
    return EvaluationSet("imagenet", n, IMAGENET_SUBSET_SHA256, labels, _ImageFiles(paths, transform))


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


def _transform(preprocessing: Mapping[str, Any] | None) -> transforms.Compose:
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


def _class_root(root: DataRoot) -> Path:
    """<root>/val when it exists, else <root>: the folder holding the <wnid> folders. ImageNet is never
    downloaded, so without a root the user named it is looked for only in <cache>/imagenet (the
    cache itself holds the other datasets' downloads, which are not ImageNet class folders)."""
    if not root.named_by_user:
        root = dataclasses.replace(root, path=root.path / "imagenet")
    if not root.path.is_dir():
        raise not_found_error("imagenet", root, EXPECTED_LAYOUT, False)
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
                                f"class folders. {how_to_get('imagenet')}")
            class_folders += 1
            _collect_wanted_files(Path(entry.path), entry.name, wanted, located)
    if class_folders == 0:
        raise _no_class_folders(class_root, has_loose_images)
    return located


def _no_class_folders(class_root: Path, has_loose_images: bool) -> DataError:
    if has_loose_images:
        return DataError(f"{class_root} holds the validation images without class folders; sort "
                         f"them into <wnid> folders first (the file names carry no label). "
                         f"{how_to_get('imagenet')}")
    return DataError(f"{class_root} holds no ImageNet class folders; expected "
                     f"{EXPECTED_LAYOUT}. {how_to_get('imagenet')}")


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
