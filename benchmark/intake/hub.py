"""Fetch a submission's files from the Hugging Face Hub at its pinned revision, hash-checked.

Only the files the manifest names are downloaded (the safetensors weights, and config.json when the
architecture comes from it), one by one with `hf_hub_download` at the full commit sha, never a
snapshot with patterns: whatever else the repository holds (pickles included) never reaches disk.

The store is `<threatbench cache>/submissions/<owner>--<name>/<revision>/<file>`. A file enters it
only after its size and sha256 match the manifest; downloads go to a temporary folder beside it that
is removed whatever happens, so a failure leaves no partial file. A rerun whose files are all in the
store makes no network call at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmark.errors import ThreatbenchError
from benchmark.intake.manifest import PICKLE_SUFFIXES, HubModel, Manifest
from benchmark.models.defense import file_sha256
from benchmark.runtime.cache import cache_dir

MAX_FILE_BYTES = 4 * 1024**3     # ViT-H/14 in float32 is 2.5 GB; anything larger is refused
MAX_CONFIG_BYTES = 1024**2


class HubError(ThreatbenchError):
    """The Hub cannot give the pinned files: unreachable, missing, too large, or not what was pinned."""


@dataclass(frozen=True)
class FetchedFiles:
    weights: Path
    config: Path | None
    downloaded: tuple[str, ...]      # files that came over the network this time ("" = all cached)


def store_dir(model: HubModel) -> Path:
    owner, name = model.repo.split("/")
    return cache_dir() / "submissions" / f"{owner}--{name}" / model.revision


def endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _stored(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(path) == sha256


def _hub_failure(error: Exception, model: HubModel) -> HubError | None:
    """A clear HubError for what the Hub client raised, or None when it is not a Hub problem."""
    from huggingface_hub import errors

    where = f"{model.repo}@{model.revision}"
    if isinstance(error, errors.OfflineModeIsEnabled):
        return HubError(f"{where}: HF_HUB_OFFLINE is set and the files are not in the store "
                        f"({store_dir(model)}); unset it to download them once")
    if isinstance(error, errors.RevisionNotFoundError):
        return HubError(f"{where}: the revision does not exist in the repository; copy the full sha of "
                        "the commit that holds your weights from the repository's history")
    if isinstance(error, errors.RepositoryNotFoundError | errors.GatedRepoError):
        return HubError(f"{where}: repository or revision not found on {endpoint()} (or it is private or "
                        "gated: the harness only reads public repositories); check model.repo and "
                        "model.revision")
    if isinstance(error, errors.EntryNotFoundError):
        return HubError(f"{where}: {error}")
    if isinstance(error, errors.HfHubHTTPError):
        return HubError(f"{where}: the Hub at {endpoint()} answered with an error: {error}")
    transport = type(error).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")
    if transport or isinstance(error, ConnectionError | TimeoutError):
        return HubError(f"cannot reach the Hub at {endpoint()} ({type(error).__name__}: {error}); check "
                        "the network or HF_ENDPOINT. Files already fetched are used offline")
    return None


def _remote_files(model: HubModel) -> dict[str, tuple[int | None, str | None]]:
    """path -> (size, LFS sha256 when the Hub reports one) for every file at the revision."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError

    api = HfApi(endpoint=endpoint())
    try:
        info = api.model_info(model.repo, revision=model.revision, files_metadata=True)
    except EntryNotFoundError:   # some Hub servers answer a missing repository or revision with 404
        raise HubError(f"{model.repo}@{model.revision}: repository or revision not found on {endpoint()}; "
                       "check model.repo and model.revision") from None
    if info.sha and info.sha != model.revision:
        raise HubError(f"{model.repo}: the Hub resolved revision {model.revision} to {info.sha}; pin "
                       "the full commit sha")
    listing = {s.rfilename: (s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []}
    wanted = [f for f in model.files() if f in listing]
    if wanted:
        for item in api.get_paths_info(model.repo, wanted, revision=model.revision):
            lfs = getattr(item, "lfs", None)
            listing[item.path] = (getattr(item, "size", None), lfs.sha256 if lfs else listing[item.path][1])
    return listing


def _check_listing(model: HubModel, listing: dict[str, tuple[int | None, str | None]],
                   max_bytes: int) -> None:
    where = f"{model.repo}@{model.revision[:12]}"
    for name, sha256 in model.files().items():
        if name not in listing:
            pickles = sorted(f for f in listing if f.lower().endswith(PICKLE_SUFFIXES))
            if pickles and name.endswith(".safetensors"):
                raise HubError(f"{where}: no {name}, only pickle weights ({', '.join(pickles)}). threatbench "
                               "never downloads or loads pickles; convert them with safetensors.torch."
                               "save_file(model.state_dict(), 'model.safetensors'), push, and pin the new commit")
            raise HubError(f"{where}: the repository has no file {name!r} at this revision; it has: "
                           f"{', '.join(sorted(listing)) or 'no files'}")
        size, remote_sha256 = listing[name]
        limit = MAX_CONFIG_BYTES if name == "config.json" else max_bytes
        if size is not None and size > limit:
            raise HubError(f"{where}: {name} is {size / 1e6:.1f} MB, over the {limit / 1e6:.0f} MB limit "
                           "for a submitted file; nothing was downloaded")
        if remote_sha256 is not None and remote_sha256 != sha256:
            raise HubError(f"{where}: the Hub reports sha256 {remote_sha256} for {name}, the manifest pins "
                           f"{sha256}; fix model.sha256 or the revision. Nothing was downloaded")


def _download(model: HubModel, name: str, sha256: str, size: int | None, target: Path,
              max_bytes: int) -> None:
    """Download `name` into a temporary folder, check it, and only then move it to `target`."""
    from huggingface_hub import hf_hub_download

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        local = Path(hf_hub_download(model.repo, name, revision=model.revision, local_dir=temporary,
                                     endpoint=endpoint()))
        actual_size = local.stat().st_size
        limit = MAX_CONFIG_BYTES if name == "config.json" else max_bytes
        if actual_size > limit or (size is not None and actual_size != size):
            raise HubError(f"{model.repo}@{model.revision[:12]}: {name} is {actual_size} bytes (listed "
                           f"{size}, limit {limit}); refused and deleted")
        actual = file_sha256(local)
        if actual != sha256:
            raise HubError(f"{model.repo}@{model.revision[:12]}: {name} has sha256 {actual}, the manifest "
                           f"pins {sha256}; the download was deleted. Fix model.sha256 (sha256sum {name}) "
                           "or the revision")
        os.replace(local, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def fetch(manifest: Manifest, *, max_bytes: int = MAX_FILE_BYTES, offline: bool = False) -> FetchedFiles:
    """The manifest's files from the store, downloading (and checking) what is missing."""
    model = manifest.model
    root = store_dir(model)
    files = model.files()
    missing = {name: sha for name, sha in files.items() if not _stored(root / name, sha)}
    if missing and offline:
        raise HubError(f"{manifest.name}: {', '.join(missing)} not in the store {root}; run "
                       f"`threatbench submission fetch {manifest.path}` with network access first")
    if missing:
        try:
            listing = _remote_files(model)
            _check_listing(model, listing, max_bytes)
            for name, sha256 in missing.items():
                _download(model, name, sha256, listing[name][0], root / name, max_bytes)
        except HubError:
            raise
        except Exception as error:
            failure = _hub_failure(error, model)
            if failure is None:
                raise
            raise failure from None
    config = root / "config.json" if model.from_config else None
    return FetchedFiles(weights=root / model.weights, config=config, downloaded=tuple(missing))
