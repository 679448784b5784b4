"""Blob: an N-d array pair (data, diff) in SyncedMemory, with Caffe's shape API."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from caffe import common
from caffe.errors import CaffeError
from caffe.syncedmem import SyncedMemory

MAX_BLOB_AXES = 32
INT_MAX = 2**31 - 1
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


class Blob:
    """Values (``data``) and gradients (``diff``) of one N-d array.

    ``reshape`` reallocates only when the count grows past the capacity, so views taken earlier
    keep showing the blob's values. pycaffe's ``data``/``diff`` are writable host views.
    """

    def __init__(self, shape: Sequence[int] | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.name = ""  # the net's name for this blob, for errors (set by Net)
        self._shape: list[int] = []
        self._count = 0
        self._capacity = 0
        self._data = SyncedMemory(0, dtype)
        self._diff = SyncedMemory(0, dtype)
        # Shaped views of the flat buffers, by buffer identity; cleared on reshape and share.
        self._views: dict[int, tuple[object, object]] = {}
        if shape is not None:  # Blob() has count 0; Blob([]) is a scalar, as in Caffe
            self.reshape(shape)

    # --- shape -------------------------------------------------------------------------------
    def reshape(self, *shape) -> None:
        """Reshape to ``shape`` (a list, a BlobShape, or several ints, as pycaffe accepts)."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
            # The common case before every forward, checked first: a list or tuple equal to
            # the current shape (what the checks below would accept and then leave alone).
            # (Blob() holds shape [] with count 0, which reshape([]) makes a scalar.)
            if type(shape) in (list, tuple) and len(shape) == len(self._shape) and \
                    list(shape) == self._shape and (self._shape or self._count == 1):
                return
        if hasattr(shape, "dim"):
            shape = list(shape.dim)
        dims = [int(d) for d in shape]
        if len(dims) > MAX_BLOB_AXES:
            raise CaffeError(f"Blob: {len(dims)} axes exceed the maximum of {MAX_BLOB_AXES}")
        count = 1
        for d in dims:
            if d < 0:
                raise CaffeError(f"Blob: negative dimension in shape {dims}")
            if d and count > INT_MAX // d:
                # As Caffe's Blob::Reshape: counts are int there, so no blob may exceed INT_MAX.
                raise CaffeError(f"Blob{f' {self.name!r}' if self.name else ''}: blob size "
                                 f"exceeds INT_MAX ({INT_MAX}): shape {dims}")
            count *= d
        if dims == self._shape and count == self._count:
            return  # the common case before every forward: nothing to do
        self._shape = dims
        self._count = count
        self._views.clear()
        if count > self._capacity:
            self._capacity = count
            self._data = SyncedMemory(count, self.dtype)
            self._diff = SyncedMemory(count, self.dtype)

    def reshape_like(self, other: Blob) -> None:
        """Reshape to ``other``'s shape (Caffe's ReshapeLike)."""
        self.reshape(other.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        """The dims, as a tuple."""
        return tuple(self._shape)

    def shape_at(self, index: int) -> int:
        """The dim of one axis; a negative axis counts from the end."""
        return self._shape[self.canonical_axis_index(index)]

    @property
    def count(self) -> int:
        """The number of elements (product of the dims)."""
        return self._count

    def count_range(self, start: int, end: int | None = None) -> int:
        """Product of dims in [start, end) (Caffe's count(start, end))."""
        end = self.num_axes if end is None else end
        n = 1
        for d in self._shape[start:end]:
            n *= d
        return n

    @property
    def num_axes(self) -> int:
        """The number of axes."""
        return len(self._shape)

    @property
    def capacity(self) -> int:
        """Elements allocated; reshape reallocates only when count grows past it."""
        return self._capacity

    def canonical_axis_index(self, axis_index: int) -> int:
        """Map a possibly negative axis to [0, num_axes), with Caffe's range check."""
        n = self.num_axes
        if not -n <= axis_index < n:
            raise CaffeError(f"axis {axis_index} out of range for {n}-D blob with shape "
                             f"{self.shape_string()}")
        return axis_index + n if axis_index < 0 else axis_index

    def _legacy(self, index: int) -> int:
        if self.num_axes > 4:
            raise CaffeError(f"legacy accessor on a {self.num_axes}-D blob "
                             f"{self.shape_string()}; use shape instead")
        if index >= self.num_axes or index < -self.num_axes:
            return 1
        return self._shape[index]

    @property
    def num(self) -> int:
        """Legacy 4-D accessor: dim 0 (1 when missing)."""
        return self._legacy(0)

    @property
    def channels(self) -> int:
        """Legacy 4-D accessor: dim 1 (1 when missing)."""
        return self._legacy(1)

    @property
    def height(self) -> int:
        """Legacy 4-D accessor: dim 2 (1 when missing)."""
        return self._legacy(2)

    @property
    def width(self) -> int:
        """Legacy 4-D accessor: dim 3 (1 when missing)."""
        return self._legacy(3)

    def shape_string(self) -> str:
        """The shape as Caffe logs it: ``"2 3 4 (24)"``."""
        return " ".join(str(d) for d in self._shape) + f" ({self._count})"

    def offset(self, *indices: int) -> int:
        """Row-major flat index of ``indices`` (missing trailing indices count as 0)."""
        off = 0
        for axis, d in enumerate(self._shape):
            off = off * d + (indices[axis] if axis < len(indices) else 0)
        return off

    # --- host views (numpy) ------------------------------------------------------------------
    # Every accessor below returns the shaped view made once per buffer and shape (layers ask
    # for views many times per pass); the look-up is written out in each, as these run a few
    # dozen times per iteration of a small net.
    def _shaped(self, flat):
        """``flat``'s first ``count`` elements in this blob's shape (cached)."""
        entry = self._views.get(id(flat))
        if entry is not None and entry[0] is flat:
            return entry[1]
        return self._new_view(flat)

    def _new_view(self, flat):
        head = flat[: self._count]
        view = head.reshape(self._shape) if isinstance(flat, np.ndarray) else head.view(
            self._shape)
        self._views[id(flat)] = (flat, view)
        return view

    def cpu_data(self) -> np.ndarray:
        """Read-only host view of the values (copied from the device first when newer there)."""
        return self._shaped(self._data.cpu_data())

    def mutable_cpu_data(self) -> np.ndarray:
        """Writable host view of the values; marks the device copy stale."""
        flat = self._data.mutable_cpu_data()
        entry = self._views.get(id(flat))
        if entry is not None and entry[0] is flat:
            return entry[1]
        return self._new_view(flat)

    def cpu_diff(self) -> np.ndarray:
        """Read-only host view of the gradients (copied from the device first when newer)."""
        return self._shaped(self._diff.cpu_data())

    def mutable_cpu_diff(self) -> np.ndarray:
        """Writable host view of the gradients; marks the device copy stale."""
        flat = self._diff.mutable_cpu_data()
        entry = self._views.get(id(flat))
        if entry is not None and entry[0] is flat:
            return entry[1]
        return self._new_view(flat)

    @property
    def data(self) -> np.ndarray:
        """pycaffe's writable host view of the values."""
        return self.mutable_cpu_data()

    @data.setter
    def data(self, value) -> None:
        self.mutable_cpu_data()[...] = value

    @property
    def diff(self) -> np.ndarray:
        """pycaffe's writable host view of the gradients."""
        return self.mutable_cpu_diff()

    @diff.setter
    def diff(self, value) -> None:
        self.mutable_cpu_diff()[...] = value

    # --- device tensors (torch), for layer math --------------------------------------------

    def gpu_data(self) -> torch.Tensor:
        """The values as a device tensor (treat as read-only)."""
        return self._shaped(self._data.gpu_data())

    def mutable_gpu_data(self) -> torch.Tensor:
        """The values as a writable device tensor; marks the host copy stale."""
        return self._shaped(self._data.mutable_gpu_data())

    def gpu_diff(self) -> torch.Tensor:
        """The gradients as a device tensor (treat as read-only)."""
        return self._shaped(self._diff.gpu_data())

    def mutable_gpu_diff(self) -> torch.Tensor:
        """The gradients as a writable device tensor; marks the host copy stale."""
        return self._shaped(self._diff.mutable_gpu_data())

    def device_data(self) -> torch.Tensor:
        """Values on the current mode's device (treat as read-only)."""
        flat = self._data.device_tensor()
        entry = self._views.get(id(flat))
        if entry is not None and entry[0] is flat:
            return entry[1]
        return self._new_view(flat)

    def mutable_device_data(self) -> torch.Tensor:
        """Writable values on the current mode's device; marks the other copy stale."""
        flat = self._data.mutable_device_tensor()
        entry = self._views.get(id(flat))
        if entry is not None and entry[0] is flat:
            return entry[1]
        return self._new_view(flat)

    def device_diff(self) -> torch.Tensor:
        """Gradients on the current mode's device (treat as read-only)."""
        flat = self._diff.device_tensor()
        entry = self._views.get(id(flat))
        if entry is not None and entry[0] is flat:
            return entry[1]
        return self._new_view(flat)

    def mutable_device_diff(self) -> torch.Tensor:
        """Writable gradients on the current mode's device; marks the other copy stale."""
        flat = self._diff.mutable_device_tensor()
        entry = self._views.get(id(flat))
        if entry is not None and entry[0] is flat:
            return entry[1]
        return self._new_view(flat)

    @property
    def _gpu_data_ptr(self) -> int:
        """The device address of the values (pycaffe's PR #5904), synced as gpu_data() does:
        for handing the blob to CUDA code outside caffe."""
        return self._device_pointer("_gpu_data_ptr", self.gpu_data)

    @property
    def _gpu_diff_ptr(self) -> int:
        """The device address of the gradients, synced as gpu_diff() does."""
        return self._device_pointer("_gpu_diff_ptr", self.gpu_diff)

    def _device_pointer(self, what: str, accessor) -> int:
        if not torch.cuda.is_available():
            raise CaffeError(f"Blob.{what}: CUDA is not available, so the blob has no device "
                             f"memory; this needs a CUDA build of torch and caffe.set_mode_gpu()")
        if common.mode() != common.GPU:
            raise CaffeError(f"Blob.{what} needs GPU mode: call caffe.set_mode_gpu() first "
                             f"(the blob's values live on the host in CPU mode)")
        return int(accessor().data_ptr())

    @property
    def data_mem(self) -> SyncedMemory:
        """The SyncedMemory holding the values (shared by ``share_data``)."""
        return self._data

    @property
    def diff_mem(self) -> SyncedMemory:
        """The SyncedMemory holding the gradients (shared by ``share_diff``)."""
        return self._diff

    def replace_memory(self, data: SyncedMemory, diff: SyncedMemory) -> None:
        """Hold ``data`` and ``diff`` (each of at least ``capacity`` elements) instead of the
        current buffers, which are let go (caffe.inference gives unkept blobs' storage back)."""
        self._data = data
        self._diff = diff
        self._views.clear()

    # --- sharing and arithmetic ------------------------------------------------------------
    def share_data(self, other: Blob) -> None:
        """Alias ``other``'s values (counts must match)."""
        if self._count != other.count:
            raise CaffeError(f"share_data: count {self._count} != {other.count}")
        if self._data is other._data:
            return  # already shared (Split re-shares every pass): keep the cached views
        self._data = other._data
        self._views.clear()
        self._capacity = min(self._capacity, other._capacity) or other._capacity

    def share_diff(self, other: Blob) -> None:
        """Alias ``other``'s gradients (counts must match)."""
        if self._count != other.count:
            raise CaffeError(f"share_diff: count {self._count} != {other.count}")
        if self._diff is other._diff:
            return
        self._diff = other._diff
        self._views.clear()

    def update(self) -> None:
        """data -= diff, on the side where the data is newest (Caffe's Blob::Update)."""
        if self._count == 0:
            return
        self.mutable_device_data().sub_(self.device_diff())

    def asum_data(self) -> float:
        """Sum of absolute values of the data (Caffe's asum_data; 0 for an empty blob)."""
        return float(self.device_data().abs().sum()) if self._count else 0.0

    def asum_diff(self) -> float:
        """Sum of absolute values of the diff (0 for an empty blob)."""
        return float(self.device_diff().abs().sum()) if self._count else 0.0

    def sumsq_data(self) -> float:
        """Sum of squares of the data, as L2 regularization and clipping use it."""
        return float(self.device_data().square().sum()) if self._count else 0.0

    def sumsq_diff(self) -> float:
        """Sum of squares of the diff, as gradient clipping uses it."""
        return float(self.device_diff().square().sum()) if self._count else 0.0

    def scale_data(self, factor: float) -> None:
        """Multiply the data in place by ``factor``."""
        if self._count:
            self.mutable_device_data().mul_(factor)

    def scale_diff(self, factor: float) -> None:
        """Multiply the diff in place by ``factor`` (iter_size normalization, clipping)."""
        if self._count:
            self.mutable_device_diff().mul_(factor)

    def shape_equals(self, proto) -> bool:
        """Whether a BlobProto's shape matches (Caffe's ShapeEquals). Legacy num/channels/
        height/width are compared with this shape padded to 4 axes at the front, as Caffe's
        old parameter blobs were (an InnerProduct weight 1 x 1 x M x N, a bias 1 x 1 x 1 x N)."""
        if _has_legacy_dims(proto):
            legacy = [1] * (4 - len(self._shape)) + list(self._shape)
            return len(self._shape) <= 4 and legacy == [proto.num, proto.channels, proto.height,
                                                        proto.width]
        return list(self._shape) == proto_shape(proto)

    def copy_from(self, source: Blob, copy_diff: bool = False, reshape: bool = False) -> None:
        """Copy ``source``'s data (or diff) into this blob (Caffe's CopyFrom)."""
        if source.count != self._count or source.shape != self.shape:
            if not reshape:
                raise CaffeError(f"copy_from: shape mismatch {self.shape_string()} vs "
                                 f"{source.shape_string()}; pass reshape=True to reshape")
            self.reshape_like(source)
        if copy_diff:
            self.mutable_device_diff().copy_(source.device_diff())
        else:
            self.mutable_device_data().copy_(source.device_data())

    # --- proto -------------------------------------------------------------------------------
    def from_proto(self, proto, reshape: bool = True, packed: dict | None = None) -> None:
        """Load a BlobProto: ``shape`` or legacy num/channels/height/width; float or double.

        ``packed`` maps field numbers (5: data, 8: double_data) to values cut out of the proto
        by caffe.caffemodel (``len`` and ``read_into``); they are read straight into the
        blob's host buffer instead of going through a parsed repeated field.
        """
        shape = proto_shape(proto)
        if reshape:
            self.reshape(shape)
        elif not self.shape_equals(proto):
            raise CaffeError(f"from_proto: blob shape {self.shape_string()} does not match "
                             f"proto shape {shape}")
        np_dtype = _NP_DTYPES[self.dtype]
        packed = packed or {}
        data = packed.get(5, proto.data)
        double_data = packed.get(8, proto.double_data)
        stored = len(double_data) or len(data)
        if stored != self._count:  # checked before the blob's memory is touched
            raise CaffeError(f"from_proto: {stored} values for a blob of shape "
                             f"{self.shape_string()}")
        values = double_data if len(double_data) else data
        target = self._data.mutable_cpu_data()[:self._count]
        if hasattr(values, "read_into"):
            values.read_into(target)
        else:  # a parsed repeated field: straight into the blob's buffer, converting once
            wire = np.float64 if values is double_data else np.float32
            target[...] = np.asarray(values, dtype=wire)
        diff = proto.double_diff if len(proto.double_diff) else proto.diff
        if len(diff):
            if len(diff) != self._count:
                raise CaffeError(f"from_proto: {len(diff)} diff values for a blob of shape "
                                 f"{self.shape_string()}")
            self.mutable_cpu_diff()[...] = np.asarray(diff, dtype=np_dtype).reshape(self._shape)

    def to_proto(self, proto=None, write_diff: bool = False):
        """Write this blob into a BlobProto (float data for float32 blobs, double otherwise)."""
        from caffe.proto import caffe_pb2

        proto = caffe_pb2.BlobProto() if proto is None else proto
        proto.Clear()
        proto.shape.dim.extend(self._shape)
        double = self.dtype == torch.float64
        data = self.cpu_data().reshape(-1)
        (proto.double_data if double else proto.data).extend(data.tolist())
        if write_diff:
            diff = self.cpu_diff().reshape(-1)
            (proto.double_diff if double else proto.diff).extend(diff.tolist())
        return proto

    def __repr__(self) -> str:
        return f"Blob(shape={list(self._shape)}, dtype={self.dtype})"


class BlobVec(list):
    """pycaffe's BlobVec: a layer's parameter blobs, a list of Blobs with ``add_blob``.

    ``layer.blobs`` and ``net.params[name]`` are the same BlobVec, so blobs a Python layer adds
    in ``setup`` become the net's learnable parameters and are saved in its caffemodels.
    """

    def __init__(self, blobs: Sequence[Blob] = (), dtype: torch.dtype = torch.float32) -> None:
        super().__init__(blobs)
        self.dtype = dtype

    def add_blob(self, *shape: int, **kwargs) -> None:
        """Append a new zero-filled blob of ``shape`` (``add_blob(2, 3)``, as in pycaffe)."""
        if kwargs:
            raise CaffeError("BlobVec.add_blob takes no kwargs")
        dims = []
        for dim in shape:
            if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
                raise CaffeError(f"BlobVec.add_blob: dimensions must be ints, got {shape!r}")
            dims.append(int(dim))
        self.append(Blob(dims, dtype=self.dtype))


def _has_legacy_dims(proto) -> bool:
    return any(proto.HasField(f) for f in ("num", "channels", "height", "width"))


def proto_shape(proto) -> list[int]:
    """The shape a BlobProto describes: the legacy 4-D fields when any is set (they win over
    ``shape``, as in Caffe's FromProto), else ``shape.dim``."""
    if _has_legacy_dims(proto):
        return [proto.num, proto.channels, proto.height, proto.width]
    if proto.HasField("shape"):
        return list(proto.shape.dim)
    return []
