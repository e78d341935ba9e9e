"""IDX files (the MNIST / Fashion-MNIST / EMNIST container), gzipped or raw, read with every check.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type, ``NN`` the number
of dimensions), ``NN`` big-endian ``uint32`` dimension lengths, then the elements in C order,
big-endian. Gzip is recognised by its own magic bytes, not by the file name.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .._atomic import atomic_file
from .errors import DatasetError

# IDX element-type codes -> big-endian NumPy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


_CHUNK = 1 << 22  # bytes read at a time from a gzip stream


def _read_stream(path: Path, f, n: int) -> bytes:
    """Up to ``n`` bytes of ``f`` (fewer at its end), read in chunks, so that memory grows
    with the bytes that are really there, never with a length a header only declares."""
    parts, got = [], 0
    while got < n:
        try:
            chunk = f.read(min(_CHUNK, n - got))
        except EOFError as exc:
            raise DatasetError(f"{path}: truncated gzip stream (the file ends before the gzip "
                               f"end-of-stream marker); copy or download it again") from exc
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise DatasetError(f"{path}: corrupt gzip stream ({exc}); copy or download it "
                               f"again") from exc
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


@contextlib.contextmanager
def _open_stream(path: Path) -> Iterator:
    """The IDX stream in ``path``: the file, or its gzip decompression (recognised by the
    magic bytes, not the name)."""
    with open(path, "rb") as f:  # FileNotFoundError passes through unchanged
        compressed = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        if not compressed:
            yield f
            return
        with gzip.GzipFile(fileobj=f, mode="rb") as g:
            yield g


def _parse_header(path: Path, data: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """(element dtype, shape, header length) from the first bytes of an IDX stream."""
    if len(data) < 4:
        raise DatasetError(f"{path}: too short for an IDX file: expected at least a 4-byte magic "
                           f"number, got {len(data)} bytes")
    zero, code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES or ndim == 0:
        magic = int.from_bytes(data[:4], "big")
        raise DatasetError(
            f"{path}: bad magic number 0x{magic:08X}: expected 0x0000TTNN with type code TT in "
            f"{{{', '.join(f'{c:02X}' for c in _IDX_DTYPES)}}} and NN >= 1 dimensions "
            f"(not an IDX file, or a corrupt one)")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DatasetError(f"{path}: truncated IDX header: {ndim} dimensions need "
                           f"{header_len} header bytes, the file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    return _IDX_DTYPES[code], tuple(int(s) for s in shape), header_len


def load_idx(path: str | os.PathLike, *, ndim: int | None = None,
             shape: Sequence[int | None] | None = None) -> np.ndarray:
    """Read one IDX file, gzipped or raw, checking its header against its length.

    Parameters
    ----------
    path : path to the file; gzip is detected from the content.
    ndim : if given, the number of dimensions the file must declare.
    shape : if given, the shape the file must declare; ``None`` entries match any length.

    Returns
    -------
    array : (d0, d1, ...) in the file's element type (``uint8`` for images and labels), native
        byte order, writable.

    Memory: at most twice the data the file really holds; a length that the header only
    declares is never allocated (raw files are checked against their size before reading,
    gzip streams are read in chunks).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    DatasetError
        Bad magic number, truncated header or data, trailing bytes, corrupt gzip stream, or a
        declared shape other than ``ndim``/``shape``. The message names the file.
    """
    path = Path(path)
    with _open_stream(path) as f:
        head = _read_stream(path, f, 4)
        if len(head) == 4 and head[:2] == b"\x00\x00":
            head += _read_stream(path, f, 4 * head[3])
        dtype, dims, header_len = _parse_header(path, head)
        if ndim is not None and len(dims) != ndim:
            raise DatasetError(f"{path}: expected a {ndim}-dimensional IDX array, the header "
                               f"declares shape {dims}")
        if shape is not None and (len(shape) != len(dims)
                                  or any(s is not None and s != d for s, d in zip(shape, dims))):
            want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
            raise DatasetError(f"{path}: expected IDX shape {want}, the header declares "
                               f"{dims}")
        # Python integers: a product of 255 lengths up to 2**32 does not overflow
        expected = math.prod(dims) * dtype.itemsize
        if f is not None and not isinstance(f, gzip.GzipFile):
            found = os.fstat(f.fileno()).st_size - header_len  # known before reading
            if found < expected:
                raise DatasetError(f"{path}: truncated: the header declares shape {dims} "
                                   f"({expected} bytes of data), the file holds {found} bytes")
        data = _read_stream(path, f, expected)
        trailing = len(_read_stream(path, f, 1 << 20))
    found = len(data)
    if found < expected:
        raise DatasetError(f"{path}: truncated: the header declares shape {dims} "
                           f"({expected} bytes of data), the file holds {found} bytes")
    if trailing:
        more = "" if trailing < 1 << 20 else " or more"
        raise DatasetError(f"{path}: {trailing}{more} unexpected trailing bytes after the "
                           f"{expected} bytes of data declared by shape {dims}")
    flat = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize)
    return flat.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def idx_bytes(array: np.ndarray) -> bytes:
    """The exact bytes of the uncompressed IDX file holding ``array`` (header and data)."""
    array = np.asarray(array)
    code = _IDX_CODES[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()


def save_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file, atomically (a temporary file renamed into place).

    Parameters
    ----------
    path : destination; gzip-compressed when ``compress`` is True, or when it is None and the
        name ends in ``.gz``.
    array : (d0, d1, ...) of uint8, int8, int16, int32, float32 or float64, at least 1-D.

    Returns
    -------
    The path written.
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        raise TypeError(f"array: expected one of uint8, int8, int16, int32, float32, float64, "
                        f"got {array.dtype}")
    if array.ndim < 1 or array.ndim > 255:
        raise ValueError(f"array: expected 1 to 255 dimensions, got shape {array.shape}")
    if compress is None:
        compress = path.suffix == ".gz"
    payload = idx_bytes(array)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        if compress:
            # no name, mtime=0: the same array always gives the same bytes
            with gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as g:
                g.write(payload)
        else:
            f.write(payload)
    return path
