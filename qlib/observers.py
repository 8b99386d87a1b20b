"""Observers: watch tensors go by, remember their range, turn it into scale and zero point.

Chapters: Range clipping and calibration; Integer-only inference; Quantization-aware training.

An observer is a pass-through module: ``y = observer(x)`` returns ``x`` unchanged and
updates the observer's range. Observers differ only in *how they track the range*;
all of them turn it into (scale, zero point) with one shared formula,
:func:`qlib.granularity.qparams`, i.e. :func:`qlib.linear.asymmetric_qparams` or
:func:`qlib.linear.symmetric_qparams` on the range widened to contain 0:

    asymmetric:  scale = (rmax - rmin) / (qmax - qmin),  zero_point = clamp(qmin - round(rmin / scale))
    symmetric:   scale = max(|rmin|, |rmax|) / qmax,      zero_point = 0

(float32, round half to even, scale at least 2**-23.)

* :class:`MinMaxObserver`: the smallest and largest value ever seen.
* :class:`MovingAverageMinMaxObserver`: an exponential moving average of each batch's
  minimum and maximum, ``rmin <- rmin + c * (min(x) - rmin)`` (the first batch sets it).
* :class:`PerChannelMinMaxObserver`: running minimum and maximum of every slice along ``axis``.
* :class:`ClippingObserver` (and :class:`PercentileObserver`, :class:`MSEObserver`,
  :class:`KLObserver`, :class:`PerChannelClippingObserver`): a symmetric range ``[-T, T]``
  whose threshold ``T`` a calibrator of :mod:`qlib.calibration` picks from every value seen.

Subclasses implement ``_update(x)`` (and ``_current_range()`` if the range is not simply the
stored ``rmin``/``rmax``, e.g. a clipping threshold chosen from a histogram).

These match PyTorch's ``torch.ao.quantization`` observers of the same names bit for bit
(tests/test_observers.py), except that a symmetric signed range here divides by ``qmax``;
PyTorch divides by ``(qmax - qmin) / 2``, which is the same number for a narrow range
(``narrow=True``: [-127, 127] at 8 bits).
"""
from __future__ import annotations

import torch
from torch import nn

from qlib._checks import as_float_tensor, check_axis
from qlib.calibration import KL_BINS, MSE_CANDIDATES, PERCENTILE, calibrate_threshold, get_calibrator
from qlib.granularity import qparams
from qlib.linear import integer_range


class Observer(nn.Module):
    """Base class: a pass-through module that tracks a real range and gives (scale, zero_point).

    ``bits``, ``signed`` and ``narrow`` choose the integer range [qmin, qmax] (see
    :func:`qlib.linear.integer_range`); ``symmetric`` chooses the formula.
    """

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = False, narrow: bool = False):
        super().__init__()
        self.qmin, self.qmax = integer_range.unguarded(bits, signed, narrow)
        self.bits, self.signed, self.symmetric, self.narrow = bits, signed, symmetric, narrow
        self.register_buffer("rmin", torch.empty(0))
        self.register_buffer("rmax", torch.empty(0))

    @property
    def observed(self) -> bool:
        """True once the observer has seen at least one tensor."""
        return self.rmin.numel() > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Update the range with ``x`` and return ``x`` unchanged."""
        checked = as_float_tensor(x.detach() if isinstance(x, torch.Tensor) else x)
        with torch.no_grad():
            self._update(checked.to(torch.float32))
        return x

    def _update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _current_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rmin, self.rmax

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The real range ``(rmin, rmax)`` the observer has settled on."""
        if not self.observed:
            raise RuntimeError(f"{type(self).__name__} has not seen any data yet: run calibration batches "
                               "through it before asking for its range")
        return self._current_range()

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` of the observed range, by the shared formula (see the module)."""
        rmin, rmax = self.range()
        return qparams(rmin, rmax, self.qmin, self.qmax, self.symmetric)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        return f"bits={self.bits}, [{self.qmin}, {self.qmax}], {kind}"


class MinMaxObserver(Observer):
    """Range = [smallest value seen, largest value seen], over every batch.

    One outlier anywhere in the calibration data sets the range for good.
    """

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x)
        if not self.observed:
            self.rmin, self.rmax = lo, hi
        else:
            self.rmin, self.rmax = torch.minimum(self.rmin, lo), torch.maximum(self.rmax, hi)


class MovingAverageMinMaxObserver(Observer):
    """Range = exponential moving average of each batch's minimum and maximum.

        first batch:  rmin = min(x),                     rmax = max(x)
        later:        rmin = rmin + c * (min(x) - rmin), rmax = rmax + c * (max(x) - rmax)

    in float32, with ``c = averaging_constant`` (0.01 by default, as in PyTorch). A single
    batch with an outlier moves the range by only ``c`` of the way.
    """

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = False, narrow: bool = False,
                 averaging_constant: float = 0.01):
        super().__init__(bits, signed, symmetric, narrow)
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x)
        if not self.observed:
            self.rmin, self.rmax = lo, hi
        else:
            c = self.averaging_constant
            self.rmin = self.rmin + c * (lo - self.rmin)
            self.rmax = self.rmax + c * (hi - self.rmax)


class PerChannelMinMaxObserver(Observer):
    """One running [min, max] per index along ``axis`` (e.g. per output channel of a weight).

    ``range()`` and ``qparams()`` then return vectors of length ``x.shape[axis]``; every
    tensor observed must have that same length along ``axis``.
    """

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = False, narrow: bool = False,
                 axis: int = 0):
        super().__init__(bits, signed, symmetric, narrow)
        self.axis = axis

    def _update(self, x: torch.Tensor) -> None:
        axis = check_axis(x, self.axis)
        flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        lo, hi = torch.aminmax(flat, dim=1)
        if not self.observed:
            self.rmin, self.rmax = lo, hi
            return
        if lo.shape != self.rmin.shape:
            raise ValueError(f"this observer tracks {self.rmin.numel()} channels along axis {self.axis}, "
                             f"but the new tensor has {lo.numel()}")
        self.rmin, self.rmax = torch.minimum(self.rmin, lo), torch.maximum(self.rmax, hi)


# --- observers that clip ----------------------------------------------------------------------

class ClippingObserver(MinMaxObserver):
    """An observer whose range is ``[-T, T]`` (``[0, T]`` if unsigned), ``T`` chosen by a calibrator.

    It keeps every value it sees (calibration sets of this course are a few hundred
    images; production tools keep a histogram instead) and asks ``calibrator(x, qmin, qmax)``
    (a name of :data:`qlib.calibration.CALIBRATORS` or a function) for the threshold when the
    range is needed. The scale then comes from the shared formula above, symmetric:
    ``scale = T / qmax``, zero point 0. ``rmin`` and ``rmax`` still hold the smallest and
    largest value seen (it tracks them as :class:`MinMaxObserver` does).
    """

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = True, narrow: bool = False,
                 calibrator="minmax", **options):
        if not symmetric:
            raise ValueError("a clipping observer chooses a symmetric threshold T: use symmetric=True")
        super().__init__(bits, signed, True, narrow)
        self.calibrator_name = calibrator if isinstance(calibrator, str) else getattr(calibrator, "__name__", "custom")
        self.calibrator = get_calibrator(calibrator, **options) if isinstance(calibrator, str) else calibrator
        if not callable(self.calibrator):
            raise TypeError(f"calibrator must be a name or a function, got {calibrator!r}")
        self._values: list[torch.Tensor] = []
        self._threshold: torch.Tensor | None = None

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the observer keeps it: one row of values per threshold (here one, flattened)."""
        return x.reshape(-1)

    def _update(self, x: torch.Tensor) -> None:
        rows = self._rows(x)
        super()._update(x)
        self._values.append(rows.clone())
        self._threshold = None

    def values(self) -> torch.Tensor:
        """Every value observed so far, in the order seen: flattened (one row per channel if per channel)."""
        if not self.observed:
            raise RuntimeError(f"{type(self).__name__} has not seen any data yet")
        return torch.cat(self._values, dim=-1)

    def threshold(self) -> torch.Tensor:
        """The clipping threshold ``T`` (float32; one per row of :meth:`values`), computed once per new data."""
        if self._threshold is None:
            values = self.values()
            rows = values if values.ndim == 2 else [values]
            t = [calibrate_threshold(v, self.qmin, self.qmax, self.calibrator) for v in rows]
            self._threshold = torch.tensor(t if values.ndim == 2 else t[0], dtype=torch.float32)
        return self._threshold

    def _current_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.threshold()
        return (-t if self.signed else torch.zeros_like(t)), t

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, calibrator={self.calibrator_name}"


class PercentileObserver(ClippingObserver):
    """Range ``[-T, T]`` with ``T`` the ``percentile``-th percentile of ``|x|`` (:func:`qlib.calibration.percentile_threshold`)."""

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = True, narrow: bool = False,
                 percentile: float = PERCENTILE):
        super().__init__(bits, signed, symmetric, narrow, calibrator="percentile", percentile=percentile)


class MSEObserver(ClippingObserver):
    """Range ``[-T, T]`` with ``T`` the candidate of least quantization MSE (:func:`qlib.calibration.mse_threshold`)."""

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = True, narrow: bool = False,
                 n_candidates: int = MSE_CANDIDATES):
        super().__init__(bits, signed, symmetric, narrow, calibrator="mse", n_candidates=n_candidates)


class KLObserver(ClippingObserver):
    """Range ``[-T, T]`` with ``T`` from TensorRT's entropy calibration (:func:`qlib.calibration.kl_threshold`).

    The histogram has ``bins`` bins over ``[0, max|x|]`` and ``levels = qmax + 1`` quantized
    bins. With ``ignore_zeros=True`` (the default) exact zeros are left out of the histogram:
    they quantize to 0 exactly at every threshold, and after a ReLU they are half of all
    values, a spike in bin 0 that the folding would smear over the first quantized bin and
    so push the threshold far too low.
    """

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = True, narrow: bool = False,
                 bins: int = KL_BINS, ignore_zeros: bool = True):
        super().__init__(bits, signed, symmetric, narrow, calibrator="kl", bins=bins, ignore_zeros=ignore_zeros)


class PerChannelClippingObserver(ClippingObserver):
    """One clipping threshold per index along ``axis`` (e.g. per output channel of a weight).

    ``threshold()``, ``range()`` and ``qparams()`` return vectors of length ``x.shape[axis]``;
    channel ``c``'s threshold is the calibrator applied to every value of ``x.select(axis, c)``
    seen so far. ``rmin`` and ``rmax`` are the smallest and largest value seen in any channel.
    """

    def __init__(self, bits: int = 8, signed: bool = True, symmetric: bool = True, narrow: bool = False,
                 calibrator="minmax", axis: int = 0, **options):
        super().__init__(bits, signed, symmetric, narrow, calibrator, **options)
        self.axis = axis

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        axis = check_axis(x, self.axis)
        rows = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        if self._values and rows.shape[0] != self._values[0].shape[0]:
            raise ValueError(f"this observer tracks {self._values[0].shape[0]} channels along axis {self.axis}, "
                             f"but the new tensor has {rows.shape[0]}")
        return rows
