"""The estimator contract shared by every model, and safe checkpoints.

A checkpoint is one ``.npz`` file holding plain arrays plus a JSON header (model class,
constructor parameters, learned metadata). It is read with ``allow_pickle=False``, so
loading never runs code from the file, and written to a temporary file that is renamed
into place, so a crash never leaves half a checkpoint.

Models with a ``device`` parameter keep their learned arrays on that device for the whole
fit (:meth:`Estimator._place_state`) and move each batch there once
(:meth:`Estimator._to_device`); checkpoints always hold host arrays.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import os
import zipfile
from types import ModuleType
from typing import Any, Callable, Dict, Optional, Tuple, Type

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from .. import backend
from .._atomic import atomic_file
from .._validate import check_choice

_REGISTRY: Dict[str, Type["Estimator"]] = {}
FORMAT = "fasttn-checkpoint"
FORMAT_VERSION = 1
DEVICES = ("cpu", "cuda")


Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def check_augment(augment: Optional[Augment]) -> None:
    """``augment`` of a ``fit``: None or a callable ``(images, rng) -> images``."""
    if augment is not None and not callable(augment):
        raise TypeError(f"augment: expected a callable (images, rng) -> images, got "
                        f"{type(augment).__name__}")


def augmented(augment: Augment, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``augment(images, rng)``, checked to keep the batch's shape."""
    out = np.asarray(augment(images, rng))
    if out.shape != images.shape:
        raise ValueError(f"augment: expected it to return shape {images.shape}, got "
                         f"{out.shape}")
    return out


def register(cls):
    _REGISTRY[cls.__name__] = cls
    return cls


def _copy_state(value: Any) -> Any:
    """A copy of learned state deep enough to survive in-place training: arrays (NumPy or
    device) are copied, containers rebuilt, anything else (numbers, strings, immutable
    objects) kept by reference."""
    if isinstance(value, np.ndarray) or (hasattr(value, "__cuda_array_interface__")
                                         and hasattr(value, "copy")):
        return value.copy()
    if isinstance(value, list):
        return [_copy_state(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy_state(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy_state(v) for k, v in value.items()}
    return value


_FITTING: set = set()  # ids of estimators inside a transactional fit (no nested snapshots)


def _transactional(fit: Callable) -> Callable:
    """Wrap a ``fit`` so that it either succeeds with finite parameters or leaves the
    estimator exactly as it was before the call.

    Every way a fit can fail (a bad argument found late, a diverging warm start, an
    interrupt, parameters that end non-finite) goes through this one place, rather than a
    check per failure: the learned state is copied before the call and put back, bit for
    bit, when the call raises.
    """
    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        if id(self) in _FITTING:
            return fit(self, *args, **kwargs)
        saved = self._fit_checkpoint()
        _FITTING.add(id(self))
        try:
            result = fit(self, *args, **kwargs)
            self._check_finite_state()
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise
        finally:
            _FITTING.discard(id(self))
        return result

    wrapper._transactional = True
    return wrapper


class Estimator(BaseEstimator):
    """scikit-learn estimator base: hyper-parameters are constructor arguments stored
    unchanged (so ``clone``, ``get_params`` and grid searches work), learned state ends in
    ``_``; device placement and checkpoints.

    Every ``fit`` of a subclass is transactional (:func:`_transactional`): it returns
    finite parameters or raises and leaves the estimator as it was.
    """

    # Attributes holding lists of learned arrays that live on the model's device.
    _DEVICE_STATE: Tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fit = cls.__dict__.get("fit")
        if fit is not None and not getattr(fit, "_transactional", False):
            cls.fit = _transactional(fit)

    def _fit_checkpoint(self) -> Dict[str, Any]:
        """The instance's attributes as ``fit`` must find them again if it fails:
        hyper-parameters by reference (a fit never changes them, and a TNN's layer objects
        must stay the caller's), learned state copied."""
        params = set(self._get_param_names())
        return {k: (v if k in params else _copy_state(v)) for k, v in self.__dict__.items()}

    def _check_finite_state(self) -> None:
        """Raise FloatingPointError if a learned array holds NaN or Inf (checked at the
        end of every fit, so that no fit returns a model that predicts garbage)."""
        if not self.__sklearn_is_fitted__():
            return
        for name, a in self._state_arrays().items():
            xp = backend.array_module(a)
            if getattr(a, "dtype", None) is not None and a.dtype.kind in "fc" \
                    and not bool(xp.all(xp.isfinite(a))):
                raise FloatingPointError(
                    f"fit: the learned array {name} holds NaN or Inf after training (the "
                    f"training diverged; lower lr, or check the hyper-parameters); "
                    f"{type(self).__name__} is left as it was before this fit")

    # -- device placement ----------------------------------------------------------------
    @property
    def _device(self) -> str:
        """The ``device`` parameter; ``"cpu"`` for a model without one."""
        return getattr(self, "device", "cpu")

    def _check_device(self) -> str:
        """Validate the ``device`` parameter (its name only: no import of CuPy)."""
        return check_choice("device", self._device, DEVICES)

    def _device_module(self) -> ModuleType:
        """NumPy or CuPy for the ``device`` parameter.

        Raises
        ------
        ValueError
            For a device other than "cpu" or "cuda".
        fasttn._cuda.CUDAUnavailableError
            For "cuda" where CuPy or a GPU is missing (saying which).
        """
        return backend.get_module(self._check_device())

    def _to_device(self, x: Any) -> Any:
        """``x`` on the model's device: one host-to-device copy of a batch (none on the
        CPU)."""
        return backend.to_device(x, self._device)

    def _place_state(self) -> None:
        """Move every learned array onto the model's device (a no-op where it is)."""
        self._device_module()
        for name in self._DEVICE_STATE:
            setattr(self, name, [self._to_device(a) for a in getattr(self, name)])

    _FITTED_ATTR = "history_"  # set by fit; models name their parameter attribute

    def _check_fitted(self) -> None:
        """Raise :class:`sklearn.exceptions.NotFittedError` (a ValueError) before fit."""
        if getattr(self, self._FITTED_ATTR, None) is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit first")

    def __sklearn_is_fitted__(self) -> bool:
        return getattr(self, self._FITTED_ATTR, None) is not None

    def _snapshot(self) -> Dict[str, Any]:
        """A copy of the learned arrays (on their device), for :meth:`_restore`."""
        return {k: v.copy() for k, v in self._state_arrays().items()}

    def _restore(self, snapshot: Dict[str, Any]) -> None:
        """Return to the learned arrays of a :meth:`_snapshot`, keeping the history."""
        self._set_state(snapshot, self._state_meta())
        self._place_state()

    # -- checkpoints ---------------------------------------------------------------------
    def _state_arrays(self) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def _state_meta(self) -> Dict[str, Any]:
        return {}

    def _set_state(self, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> None:
        raise NotImplementedError

    def _contract_meta(self) -> Dict[str, Any]:
        """Learned metadata of the estimator contract (labels, input layout), saved beside
        the model's own."""
        return {}

    def _set_contract_state(self, meta: Dict[str, Any]) -> None:
        """Restore :meth:`_contract_meta` from a checkpoint, before the model's arrays."""

    def _check_config(self) -> None:
        """Check the hyper-parameters (models override)."""

    # Learned arrays (name prefixes) that are never negative: a checkpoint holding a
    # negative one is refused (e.g. batch-norm running variances).
    _NONNEGATIVE_STATE: Tuple[str, ...] = ()

    def _state_spec(self) -> Optional[Dict[str, Tuple[Tuple[int, ...], np.dtype]]]:
        """``name: (shape, dtype)`` of every learned array, from the hyper-parameters and
        the set-up geometry alone (nothing allocated); None where a model cannot say."""
        return None

    def _check_checkpoint_arrays(self, arrays: Dict[str, np.ndarray],
                                 meta: Dict[str, Any]) -> None:
        """Check a checkpoint's arrays before :meth:`_set_state` uses them: finite, in
        range, and (where the model gives :meth:`_state_spec`) exactly the names, shapes
        and dtypes its parameters imply."""
        spec = self._checkpoint_spec(meta)
        if spec is not None:
            missing, extra = sorted(set(spec) - set(arrays)), sorted(set(arrays) - set(spec))
            if missing or extra:
                raise ValueError(f"{(missing or extra)[0]}: expected the arrays "
                                 f"{sorted(spec)[:8]}{'...' if len(spec) > 8 else ''} of "
                                 f"the saved parameters; missing {missing[:4]}, unexpected "
                                 f"{extra[:4]}")
            for name, (shape, dtype) in spec.items():
                a = arrays[name]
                if tuple(a.shape) != tuple(shape) or a.dtype != dtype:
                    raise ValueError(f"{name}: expected shape {tuple(shape)} of {dtype}, got "
                                     f"shape {tuple(a.shape)} of {a.dtype}")
        for name, a in arrays.items():
            n_bad = int(np.count_nonzero(~np.isfinite(a)))
            if n_bad:
                raise ValueError(f"{name}: expected finite values, got {n_bad} NaN/Inf "
                                 f"entries")
            if name.startswith(self._NONNEGATIVE_STATE) and a.size and a.min() < 0:
                raise ValueError(f"{name}: expected values >= 0, got {float(a.min())}")

    def _checkpoint_spec(self, meta: Dict[str, Any]):
        """The :meth:`_state_spec` a checkpoint's arrays must match (None: not checked)."""
        return None

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model to ``path`` (``.npz``), atomically; arrays on a device are
        copied to the host first."""
        if not hasattr(self, "n_features_in_"):
            raise ValueError(f"{type(self).__name__} is not fitted yet; call fit before save")
        header = {"format": FORMAT, "version": FORMAT_VERSION, "class": type(self).__name__,
                  "params": _jsonable(self.get_params()), "meta": _jsonable({**self._state_meta(), **self._contract_meta()})}
        arrays = {k: backend.to_numpy(v) for k, v in self._state_arrays().items()}
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        with atomic_file(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)


class CheckpointError(ValueError):
    """A checkpoint file is unusable: not a checkpoint, corrupt, or holding a field of the
    wrong type, shape, dtype, range or size. The message names the file and the field."""


# Size bounds of what a checkpoint may make ``load`` allocate (a checkpoint is untrusted
# input: a 20 KB file must not be able to ask for 32 GiB).
MAX_HEADER_BYTES = 1 << 24       # the JSON header
MAX_STATE_ELEMENTS = 1 << 28     # numbers in all learned arrays together (2 GiB as float64)
MAX_PIXELS = 1 << 26             # input and network images (8192 x 8192)


def load(path: str | os.PathLike, device: Optional[str] = None) -> Estimator:
    """Read a checkpoint written by ``save``; returns a fitted model of the stored class.

    A checkpoint is treated as untrusted input: every array's header (dtype, shape, size)
    is checked before the array is read, the JSON header's every field before it is used,
    and the arrays against the shapes, dtypes and ranges the model's parameters imply.
    Nothing is allocated beyond the arrays the file really holds, :data:`MAX_STATE_ELEMENTS`
    numbers of learned state and images of :data:`MAX_PIXELS`.

    Parameters
    ----------
    path : str or path-like
        A ``.npz`` file written by ``save``.
    device : {"cpu", "cuda"}, optional
        Where the model's arrays go, overriding its saved ``device`` parameter (e.g.
        ``"cpu"`` to inspect a model trained on a GPU on a machine without one). By default
        the saved parameter, or ``"cpu"`` for a checkpoint without one.

    Returns
    -------
    Estimator
        The fitted model, its learned arrays on its device.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError
        (a ValueError) The file is not a usable checkpoint; the message names the file and
        the field.
    """
    path = os.fspath(path)
    if device is not None:
        check_choice("device", device, DEVICES)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no checkpoint at {path!r}")
    arrays = _read_arrays(path)
    if "__header__" not in arrays:
        raise CheckpointError(f"{path}: __header__: missing; it is not a fasttn checkpoint")
    header = _read_header(path, arrays.pop("__header__"))
    cls = _REGISTRY[header["class"]]
    meta = header["meta"]
    try:
        # parameters a checkpoint predates take the value that reproduces its model
        params = {**getattr(cls, "_PARAMS_BEFORE_SAVED", {}), **header["params"]}
        model = cls(**_with_device(cls, params, device))
        model._check_config()
        model._set_contract_state(meta)
        model._check_checkpoint_arrays(arrays, meta)
        model._set_state(arrays, meta)
    except CheckpointError:
        raise
    except KeyError as exc:
        raise CheckpointError(f"{path}: {exc.args[0]}: missing, though a "
                              f"{header['class']} checkpoint holds it") from exc
    except (TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    model._place_state()
    return model


def _read_arrays(path: str) -> Dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path``, each member's header checked before it is
    read (``np.load`` would allocate whatever shape a header declares)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable fasttn checkpoint (.npz) "
                              f"({exc})") from exc
    arrays: Dict[str, np.ndarray] = {}
    total = 0
    with archive:
        for info in archive.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else None
            if key is None or key in arrays:
                raise CheckpointError(f"{path}: {info.filename}: expected .npy arrays of "
                                      f"distinct names only in the archive")
            try:
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f"unsupported .npy format version {version}")
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
                    data_bytes = info.file_size - f.tell()
            except (zipfile.BadZipFile, ValueError, OSError, EOFError, SyntaxError,
                    TypeError, NotImplementedError, RuntimeError) as exc:
                raise CheckpointError(f"{path}: {key}: unreadable array ({exc})") from exc
            total += _check_member(path, key, shape, dtype, data_bytes)
            if total > MAX_STATE_ELEMENTS + MAX_HEADER_BYTES:
                raise CheckpointError(f"{path}: {key}: the arrays exceed "
                                      f"{MAX_STATE_ELEMENTS} numbers in all")
            try:
                with archive.open(info) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
            except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
                raise CheckpointError(f"{path}: {key}: unreadable array ({exc})") from exc
    return arrays


def _check_member(path: str, key: str, shape: Tuple[int, ...], dtype: np.dtype,
                  data_bytes: int) -> int:
    """Check one array's declared dtype and shape (and that the archive holds its data);
    return its number of elements."""
    if key == "__header__":
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: __header__: expected at most {MAX_HEADER_BYTES} "
                                  f"bytes of uint8 JSON, got dtype {dtype}, shape {shape}")
    elif dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise CheckpointError(f"{path}: {key}: expected float32 or float64 in native byte "
                              f"order, got dtype {dtype.str}")
    size = math.prod(shape)
    if size > MAX_STATE_ELEMENTS:
        raise CheckpointError(f"{path}: {key}: expected at most {MAX_STATE_ELEMENTS} "
                              f"numbers, got shape {shape}")
    if size * dtype.itemsize != data_bytes:
        raise CheckpointError(f"{path}: {key}: shape {shape} needs {size * dtype.itemsize} "
                              f"bytes, the archive holds {data_bytes}")
    return size


def _read_header(path: str, raw: np.ndarray) -> Dict[str, Any]:
    """The JSON header, its structure checked: a dict of the right format and version, a
    known model class, parameters and metadata that are dicts."""
    try:
        header = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: __header__: corrupt JSON ({exc})") from exc

    def bad(field, expected, got):
        return CheckpointError(f"{path}: {field}: expected {expected}, got {got!r}"[:600])

    if not isinstance(header, dict):
        raise bad("__header__", "a JSON object", type(header).__name__)
    if header.get("format") != FORMAT:
        raise bad("format", repr(FORMAT), header.get("format"))
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) \
            or not 1 <= version <= FORMAT_VERSION:
        raise bad("version", f"an integer from 1 to {FORMAT_VERSION} (this fasttn's "
                  f"newest)", version)
    name = header.get("class")
    if not isinstance(name, str) or name not in _REGISTRY:
        raise bad("class", f"one of {sorted(_REGISTRY)}", name)
    for field in ("params", "meta"):
        value = header.get(field)
        if not isinstance(value, dict):
            raise bad(field, "a JSON object", value)
    return header


def _with_device(cls: Type[Estimator], params: Dict[str, Any],
                 device: Optional[str]) -> Dict[str, Any]:
    """Saved constructor parameters with ``device`` overridden (when given)."""
    if device is None:
        return params
    if "device" in inspect.signature(cls.__init__).parameters:
        return {**params, "device": device}
    if device != "cpu":
        raise ValueError(f"device: a {cls.__name__} runs on the CPU only, got {device!r}")
    return params


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "get_config"):  # a TNN layer object among the parameters
        return _jsonable(obj.get_config())
    if isinstance(obj, np.dtype):
        return obj.name
    if isinstance(obj, type) and issubclass(obj, np.generic):
        return np.dtype(obj).name
    return obj
