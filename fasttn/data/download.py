"""Explicit, checksummed download of the IDX datasets (never called implicitly)."""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from .._atomic import atomic_file
from .errors import DatasetError
from .registry import dataset_info, default_download_dir
from .sources import load_idx_split

_BLOCK = 1 << 20


def _fetch(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Download ``url`` to ``dest`` through a temporary file; keep it only if the MD5 matches."""
    digest = hashlib.md5(usedforsecurity=False)
    with atomic_file(dest) as tmp, open(tmp, "wb") as out, \
            urllib.request.urlopen(url, timeout=timeout) as resp:
        for block in iter(lambda: resp.read(_BLOCK), b""):
            digest.update(block)
            out.write(block)
        if digest.hexdigest() != md5:
            raise DatasetError(f"{url}: checksum mismatch: MD5 {digest.hexdigest()}, expected "
                               f"{md5}; the file was not kept")


def download_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                     mirrors: tuple[str, ...] | None = None, timeout: float = 60.0) -> Path:
    """Download the four IDX files of ``name`` and check each against its published MD5.

    Files already present with the right checksum are kept. Each file is written to a
    temporary name and renamed only once its checksum matches.

    Parameters
    ----------
    name : ``"mnist"`` or ``"fashion-mnist"``.
    data_dir : target directory (created); default ``~/.cache/fasttn/<name>``, which the
        loaders search.
    mirrors : base URLs to try in order; default the registry's.
    timeout : seconds per connection attempt.

    Returns
    -------
    The directory holding the files.

    Raises
    ------
    DatasetError
        No mirror delivered a file with the right checksum (the message lists the attempts).
    """
    info = dataset_info(name)
    target = Path(data_dir) if data_dir else default_download_dir(info.name)
    target.mkdir(parents=True, exist_ok=True)
    for filename, md5 in info.md5.items():
        dest = target / filename
        if dest.is_file() and hashlib.md5(dest.read_bytes(),
                                          usedforsecurity=False).hexdigest() == md5:
            continue
        failures = []
        for base in mirrors or info.mirrors:
            url = base.rstrip("/") + "/" + filename
            try:
                _fetch(url, dest, md5, timeout)
                break
            except (urllib.error.URLError, OSError, DatasetError) as exc:
                failures.append(f"{url}: {exc}")
        else:
            raise DatasetError(f"{info.name}: could not download {filename}: "
                               + "; ".join(failures))
    for split in ("train", "test"):
        load_idx_split(info.name, split, target)  # full structural check of what we got
    return target
