"""Helpers shared by the built-in layers: axis and label-count checks with Caffe's messages,
and the work tensors a layer keeps between calls (Caffe keeps these as private Blobs: masks,
copies of an in-place bottom).

A ``Workspace`` hands out named tensors of a requested shape. Each name owns one flat buffer that
grows only when a larger request arrives, so steady-state iterations allocate nothing, and a
tensor handed out in forward still holds its values in backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from caffe import common
from caffe.blob import Blob
from caffe.errors import CaffeError


class Workspace:
    """Named, reusable work tensors on the current mode's device."""

    def __init__(self) -> None:
        self._flat: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype,
            device: torch.device | None = None) -> torch.Tensor:
        """A tensor of ``shape`` under ``name``; its contents are whatever was last left there."""
        device = torch.device(device) if device is not None else common.device()
        numel = 1
        for d in shape:
            numel *= int(d)
        flat = self._flat.get(name)
        if (flat is None or flat.dtype != dtype or flat.device != device
                or flat.numel() < numel):
            flat = torch.empty(numel, dtype=dtype, device=device)
            self._flat[name] = flat
        return flat[:numel].view(tuple(shape))

    def like(self, name: str, tensor: torch.Tensor, dtype: torch.dtype | None = None
             ) -> torch.Tensor:
        """A tensor shaped like ``tensor`` on its device (``dtype`` defaults to its dtype)."""
        return self.get(name, tensor.shape, dtype or tensor.dtype, tensor.device)


def canonical_axis(layer, blob: Blob, axis: int, name: str = "axis") -> int:
    """``axis`` mapped into [0, num_axes) (negative counts from the end), or a LayerError."""
    n = blob.num_axes
    layer.check(-n <= axis < n, f"{name} {axis} out of range for {n}-D bottom blob with shape "
                f"{list(blob.shape)}")
    return axis + n if axis < 0 else axis


def axis_or_legacy(layer, blob: Blob, param, axis_field: str, legacy_field: str) -> int:
    """The axis from ``axis_field`` or its legacy uint32 spelling (Concat's concat_dim, Slice's
    slice_dim), which may not be negative."""
    if param.HasField(legacy_field):
        axis = int(getattr(param, legacy_field))
        n = blob.num_axes
        layer.check(0 <= axis < n,
                    f"{legacy_field} {axis} out of range for {n}-D bottom blob with shape "
                    f"{list(blob.shape)}; it must satisfy 0 <= {legacy_field} < {n}")
        return axis
    return canonical_axis(layer, blob, int(getattr(param, axis_field)), axis_field)


def label_layout(layer, bottom: Sequence[Blob], axis: int, axis_field: str,
                 what: str) -> tuple[int, int, int, int]:
    """``(axis, outer_num, num_labels, inner_num)`` of the scores ``bottom[0]`` split at the
    canonical ``axis``, with Caffe's check that the labels ``bottom[1]`` hold outer_num *
    inner_num values (``axis_field`` and ``what`` name the axis in the messages)."""
    try:
        axis = bottom[0].canonical_axis_index(axis)
    except CaffeError as err:
        layer.check(False, f"{axis_field}: {err}")
    outer_num = bottom[0].count_range(0, axis)
    num_labels = bottom[0].shape[axis]
    inner_num = bottom[0].count_range(axis + 1)
    layer.check(outer_num * inner_num == bottom[1].count,
                f"Number of labels must match number of predictions; e.g., if {what} axis == 1 "
                f"and prediction shape is (N, C, H, W), label count (number of labels) must be "
                f"N*H*W, with integer values in {{0, 1, ..., C-1}} (prediction shape "
                f"{list(bottom[0].shape)}, label shape {list(bottom[1].shape)})")
    return axis, outer_num, num_labels, inner_num


def integer_indices(layer, values: torch.Tensor, limit: int, what: str,
                    whole: bool = True) -> torch.Tensor:
    """``values`` (indices in [0, limit) stored as floats) as int64, truncated as C++ casts
    them, or a LayerError naming the offending values. ``whole`` also rejects fractions."""
    bad = ~((values >= 0) & (values < limit))  # NaN fails both comparisons
    if whole:
        bad |= values != values.trunc()
    if bool(bad.any()):
        offending = values.reshape(-1)[bad.reshape(-1)]
        shown = offending[:5].tolist()
        more = " ..." if offending.numel() > 5 else ""
        kind = "integers" if whole else "values"
        layer.check(False, f"{what} must be {kind} in [0, {limit}); got {shown}{more}")
    return values.to(torch.int64)
