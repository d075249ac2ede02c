"""Input validation and label encoding (host side, backend independent)."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Hashable
from typing import Any

import numpy as np

IGNORE_INDEX = -100

# float64 holds every integer of magnitude up to 2**53 exactly, and not all beyond
EXACT_INT_LIMIT = 2**53


class PrecisionWarning(UserWarning):
    """Input values that change when converted to float64, the precision
    fastconvex computes distances in (long double floats, integers beyond
    2**53): the scores are those of the rounded values."""


def is_torch_tensor(obj: Any) -> bool:
    t = type(obj)
    return t.__module__.startswith("torch") and t.__name__ in ("Tensor", "Parameter")


def to_numpy(obj: Any) -> np.ndarray:
    """Host numpy view of an array-like (torch tensors are detached and copied to CPU)."""
    if is_torch_tensor(obj):
        t = obj.detach()
        if t.dtype.is_floating_point and t.dtype not in _TORCH_NUMPY_FLOATS():
            t = t.float()  # bfloat16 / float16 have no exact numpy twin for BLAS
        return t.cpu().numpy()
    return np.asarray(obj)


def _TORCH_NUMPY_FLOATS() -> tuple:
    import torch

    return (torch.float32, torch.float64)


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool; anything but True/False (numpy's included) is a
    TypeError (a string such as "no" would otherwise be truthy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def describe(where: str | None) -> str:
    return f" in {where}" if where else ""


def as_kernel_float(x: np.ndarray) -> np.ndarray:
    """The array in a float type the kernels take: float16 -> float32 (exact),
    integers and long double -> float64; float32/float64 unchanged (no copy).
    Integers beyond 2**53 and long double values round in float64:
    :func:`check_embeddings` warns of that (:class:`PrecisionWarning`)."""
    if x.dtype in (np.float32, np.float64):
        return x
    if x.dtype.kind == "f" and x.dtype.itemsize <= 4:
        return x.astype(np.float32)
    return x.astype(np.float64)


def _float64_losses(x: Any, chunk_rows: int = 65536) -> tuple[int, int | None]:
    """How many values of ``x`` float64 cannot hold exactly, and the first row
    holding one: long double values that change when rounded to float64 (or
    overflow it), and 64-bit integers of magnitude beyond 2**53. Scans in
    chunks (memory-mapped layers are never loaded whole)."""
    if is_torch_tensor(x):
        if x.dtype.is_floating_point or x.dtype.itemsize < 8:
            return 0, None
        bad = ((x > EXACT_INT_LIMIT) | (x < -EXACT_INT_LIMIT)).any(dim=1).cpu().numpy()
        count = int(((x > EXACT_INT_LIMIT) | (x < -EXACT_INT_LIMIT)).sum())
        return count, (int(np.flatnonzero(bad)[0]) if count else None)
    kind, size = x.dtype.kind, x.dtype.itemsize
    if not ((kind in "iu" and size >= 8) or (kind == "f" and size > 8)):
        return 0, None
    count, first = 0, None
    for start in range(0, x.shape[0], chunk_rows):
        block = np.asarray(x[start : start + chunk_rows])
        if kind == "f":
            with np.errstate(over="ignore"):
                lost = block.astype(np.float64).astype(block.dtype) != block
        else:
            lost = (block > EXACT_INT_LIMIT) | (block < -EXACT_INT_LIMIT) if kind == "i" else block > EXACT_INT_LIMIT
        n_lost = int(lost.sum())
        if n_lost and first is None:
            first = start + int(np.flatnonzero(lost.any(axis=1))[0])
        count += n_lost
    return count, first


def warn_float64_losses(x: Any, label: str) -> None:
    """Warn (:class:`PrecisionWarning`) when converting ``x`` to float64 changes
    any value; exact conversions (float16/32, integers within 2**53) say nothing."""
    count, row = _float64_losses(x)
    if not count:
        return
    integers = not x.dtype.is_floating_point if is_torch_tensor(x) else x.dtype.kind in "iu"
    kind = "integers beyond 2**53" if integers else "long double values"
    warnings.warn(
        f"{label} has dtype {x.dtype}: {count} value(s) ({kind}, the first in row {row}) that "
        "float64, the precision fastconvex computes in, does not hold exactly; the scores are "
        "those of the values rounded to float64 (convert or rescale the data yourself to "
        "silence this)",
        PrecisionWarning,
        stacklevel=4,
    )


def _first_non_finite_row(x: np.ndarray, chunk_rows: int = 65536) -> int | None:
    """First row holding NaN/inf, scanning in chunks (memory-mapped layers are
    never loaded whole)."""
    if x.dtype.kind in "iub":
        return None
    for start in range(0, x.shape[0], chunk_rows):
        finite = np.isfinite(x[start : start + chunk_rows]).all(axis=1)
        if not finite.all():
            return start + int(np.flatnonzero(~finite)[0])
    return None


# float64 data with coordinates beyond these magnitudes is scaled by a power of
# two before scoring: squared distances of coordinates near 1e154 overflow
# float64 and those near 1e-162 underflow to 0.
_SAFE_RANGE = (1e-100, 1e100)


def rescaled_for_range(x: Any, chunk_rows: int = 65536) -> tuple[Any, int]:
    """``(x * 2**-e, e)`` for float64 data whose largest |coordinate| lies
    outside [1e-100, 1e100] (``e`` its binary exponent, so the result is about
    1), else ``(x, 0)`` (no copy). Scaling by a power of two is exact, so the
    kNN graph, every tie and every path score are those of ``x`` itself; kNN
    distances are multiplied by ``2**e`` afterwards. Only float64 data can
    leave the range (float32 squares stay within float64's)."""
    if is_torch_tensor(x):
        if x.dtype != _torch().float64:
            return x, 0
        amax = float(x.abs().max())
    else:
        if x.dtype != np.float64:
            return x, 0
        amax = 0.0
        for start in range(0, x.shape[0], chunk_rows):
            block = x[start : start + chunk_rows]
            amax = max(amax, float(block.max()), -float(block.min()))
    if amax == 0.0 or _SAFE_RANGE[0] <= amax <= _SAFE_RANGE[1]:
        return x, 0
    e = math.frexp(amax)[1]
    if is_torch_tensor(x):
        return _torch().ldexp(x, _torch().tensor(-e, device=x.device)), e
    return np.ldexp(x, -e), e  # exact, also for subnormal inputs


def _torch():
    import torch

    return torch


def _check_real_numeric(x: np.ndarray, label: str) -> None:
    """A numpy array's element type: real numbers (floats, integers, booleans)."""
    if x.dtype.kind == "c":
        raise TypeError(f"{label} must be real, got dtype {x.dtype}")
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{label} must be numeric, got dtype {x.dtype}")


def check_frame_dtype(x: Any, *, name: str) -> None:
    """The element type of (B, T, D) hidden states: real numbers."""
    if is_torch_tensor(x):
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
        return
    _check_real_numeric(x, name)


def check_embeddings(x: Any, *, name: str = "x", where: str | None = None, convert: bool = True) -> Any:
    """Validate a (N, D) embedding matrix; returns it unchanged in kind (numpy
    array or torch tensor). With ``convert``, float16/integer arrays become
    float32/float64 (``convert=False`` leaves that to :func:`as_kernel_float`,
    so memory-mapped float16 layers are converted one at a time)."""
    if is_torch_tensor(x):
        if x.ndim != 2:
            raise ValueError(f"{name}{describe(where)} must be 2-D (N, D), got shape {tuple(x.shape)}")
        if x.dtype.is_complex:
            raise TypeError(f"{name}{describe(where)} must be real, got {x.dtype}")
        if not x.dtype.is_floating_point:
            # integers / booleans: the same numbers in float64, as for numpy input
            warn_float64_losses(x, f"{name}{describe(where)}")
            x = x.to(_torch().float64)
        n, d = x.shape
        if n == 0 or d == 0:
            raise ValueError(f"{name}{describe(where)} is empty (shape {tuple(x.shape)})")
        finite = x.isfinite().all(dim=1)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0, 0])
            raise ValueError(f"{name}{describe(where)} has a non-finite value (NaN or inf) in row {row}")
        return x
    if not isinstance(x, np.ndarray):
        if isinstance(x, (str, bytes)) or (not hasattr(x, "__len__") and not hasattr(x, "__array__")):
            raise TypeError(f"{name}{describe(where)} must be an array or tensor, got {type(x).__name__}")
        x = as_rectangular(x, f"{name}{describe(where)}")
    if x.ndim != 2:
        raise ValueError(f"{name}{describe(where)} must be 2-D (N, D), got shape {x.shape}")
    _check_real_numeric(x, f"{name}{describe(where)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}{describe(where)} is empty (shape {x.shape})")
    row = _first_non_finite_row(x)
    if row is not None:
        raise ValueError(f"{name}{describe(where)} has a non-finite value (NaN or inf) in row {row}")
    warn_float64_losses(x, f"{name}{describe(where)}")
    if convert and x.dtype not in (np.float32, np.float64):
        x = as_kernel_float(x)
    return x


def as_rectangular(x: Any, label: str) -> np.ndarray:
    """``np.asarray(x)``, with a ragged nested list named as ``label``'s fault
    (numpy's message names no argument)."""
    try:
        return np.asarray(x)
    except ValueError as exc:
        raise ValueError(f"{label} is ragged (rows of different lengths?): {exc}") from None


def check_k(k: Any, n: int, *, where: str | None = None) -> int:
    k = check_int("k", k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= n:
        raise ValueError(f"k must be < the number of points N={n}{describe(where)}, got k={k}")
    return k


def labels_to_array(labels: Any, *, name: str = "labels") -> np.ndarray:
    """Labels of any hashable kind as a numpy array (object dtype for mixed)."""
    if labels is None:
        raise TypeError(f"{name} is required")
    if is_torch_tensor(labels):
        return labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray):
        return labels
    if isinstance(labels, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of labels, got a single {type(labels).__name__}")
    if isinstance(labels, (dict, set, frozenset)):
        raise TypeError(
            f"{name} must be a sequence with one label per row, got a {type(labels).__name__} "
            "(pass list(d.values()) for a dict)"
        )
    try:
        seq = list(labels)
    except TypeError:
        raise TypeError(f"{name} must be a sequence with one label per row, got {type(labels).__name__}") from None
    if seq and all(isinstance(v, list) for v in seq):
        # nested lists: frame labels (B, T) (lists are never labels themselves;
        # tuples are, so a list of tuples stays 1-D)
        lengths = {len(v) for v in seq}
        if len(lengths) != 1:
            raise ValueError(f"{name} as nested lists must be rectangular (B, T), got row lengths {sorted(lengths)}")
        return labels_to_array(np.asarray(seq, dtype=object).reshape(len(seq), -1).ravel().tolist(), name=name).reshape(
            len(seq), -1
        )
    arr = np.empty(len(seq), dtype=object)
    arr[:] = seq
    # homogeneous ints / strings become a typed array (faster unique, sortable)
    if seq and all(isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool) for v in seq):
        try:
            return np.asarray(seq, dtype=np.int64)
        except OverflowError:  # beyond int64: Python ints keep every digit (encoded by value, as any label)
            arr[:] = [int(v) for v in seq]
            return arr
    if seq and all(isinstance(v, str) for v in seq):
        return np.asarray(seq, dtype=str)
    return arr


def check_finite_labels(labels: np.ndarray, *, name: str = "labels") -> None:
    """A NaN or inf label is refused, naming its row: NaN != NaN, so every NaN
    would become a one-member class of its own."""
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels))
    elif labels.dtype == object:
        bad = [row for row, v in enumerate(labels) if isinstance(v, (float, np.floating)) and not math.isfinite(v)]
    else:
        return
    if len(bad):
        raise ValueError(f"{name} has a non-finite label in row {int(bad[0])}")


def encode_labels(labels: np.ndarray, *, name: str = "labels") -> tuple[np.ndarray, list[Hashable]]:
    """Integer codes 0..C-1 and the class list (sorted where the labels sort,
    else in order of first appearance).

    Returns
    -------
    codes : (N,) int64
    classes : list of C labels as plain Python values
    """
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D here, got shape {labels.shape}")
    check_finite_labels(labels, name=name)
    if labels.dtype != object:
        classes, codes = np.unique(labels, return_inverse=True)
        return codes.astype(np.int64).ravel(), [c.item() if isinstance(c, np.generic) else c for c in classes]
    for row, v in enumerate(labels):
        try:
            hash(v)
        except TypeError:
            raise TypeError(f"{name}[{row}] is not hashable ({type(v).__name__}); labels must be hashable") from None
    plain = [v.item() if isinstance(v, np.generic) else v for v in labels]
    try:
        classes = sorted(set(plain))
    except TypeError:
        classes = list(dict.fromkeys(plain))
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.fromiter((lookup[v] for v in plain), dtype=np.int64, count=len(plain))
    return codes, classes


def check_labels_length(labels: np.ndarray, n: int, *, where: str | None = None) -> None:
    if labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} entries but the embeddings{describe(where)} have N={n} rows")


def check_seed(seed: Any) -> int | None:
    """``seed``: None (drawn by the caller) or an integer >= 0."""
    if seed is None:
        return None
    return check_int("seed", seed, minimum=0)
