"""Files the judge writes and reads: atomic writes (readers never see a partial file) and JSON
reads that name the file when it is broken."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmark.errors import OutputPathError, RecordError


def check_output_path(path: str | os.PathLike) -> Path:
    """`path` ready to be written: its folder is created (as `mkdir -p`); a folder as `path`, or a
    parent that is a file, is refused before minutes of measuring, not after."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"output path {path} is a directory; give a file name such as {path}/result.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputPathError(f"cannot create the folder {path.parent} for {path.name}: a file is in the way; "
                              "choose another --out") from None
    except PermissionError:
        raise OutputPathError(f"cannot create the folder {path.parent}: permission denied; choose another --out") from None
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temporary file in the same directory and rename: readers never see a partial file."""
    path = check_output_path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_current_umask())   # mkstemp creates 0600; results are shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, document: Any) -> None:
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n")


# ---------------------------------------------------------------- bitmasks


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RecordError(f"{path}: not valid JSON ({error})") from None
