"""SyncedMemory: one flat buffer with a host copy and a CUDA copy, synced lazily by head state."""

from __future__ import annotations

import numpy as np
import torch

from caffe import common
from caffe.errors import CaffeError

UNINITIALIZED = "UNINITIALIZED"
HEAD_AT_CPU = "HEAD_AT_CPU"
HEAD_AT_GPU = "HEAD_AT_GPU"
SYNCED = "SYNCED"


class SyncedMemory:
    """``size`` elements of ``dtype``; allocated zero-filled on first access, as Caffe does.

    Const accessors copy from the newer side and leave the state SYNCED; mutable accessors also
    move the head to their side, so the next read on the other side copies.
    """

    __slots__ = ("size", "dtype", "head", "_cpu", "_gpu", "_cpu_np", "_cpu_np_readonly")

    def __init__(self, size: int, dtype: torch.dtype = torch.float32) -> None:
        self.size = int(size)
        self.dtype = dtype
        self.head = UNINITIALIZED
        self._cpu: torch.Tensor | None = None
        self._gpu: torch.Tensor | None = None
        self._cpu_np: np.ndarray | None = None
        self._cpu_np_readonly: np.ndarray | None = None

    # --- syncing ---------------------------------------------------------------------------
    def _alloc_cpu(self) -> None:
        if self._cpu is None:
            self._cpu = torch.zeros(self.size, dtype=self.dtype)
            self._cpu_np = self._cpu.numpy()
            self._cpu_np_readonly = self._cpu_np.view()
            self._cpu_np_readonly.flags.writeable = False

    def _alloc_gpu(self) -> None:
        if self._gpu is None:
            if not torch.cuda.is_available():
                raise CaffeError("SyncedMemory: GPU data was requested but CUDA is not available; "
                                 "use caffe.set_mode_cpu()")
            dev = common.device() if common.mode() == common.GPU else torch.device("cuda")
            self._gpu = torch.zeros(self.size, dtype=self.dtype, device=dev)

    def _to_cpu(self) -> None:
        if self.head == UNINITIALIZED:
            self._alloc_cpu()
            self.head = HEAD_AT_CPU
        elif self.head == HEAD_AT_GPU:
            self._alloc_cpu()
            self._cpu.copy_(self._gpu)
            self.head = SYNCED

    def _to_gpu(self) -> None:
        if self.head == UNINITIALIZED:
            self._alloc_gpu()
            self.head = HEAD_AT_GPU
        elif self.head == HEAD_AT_CPU:
            self._alloc_gpu()
            self._gpu.copy_(self._cpu)
            self.head = SYNCED

    # --- host side -------------------------------------------------------------------------
    # The host accessors check the head inline: they run several times per layer per pass.
    def cpu_tensor(self) -> torch.Tensor:
        """The host copy as a flat tensor, synced from the device when newer there (read-only
        use)."""
        if self.head != HEAD_AT_CPU and self.head != SYNCED:
            self._to_cpu()
        return self._cpu

    def mutable_cpu_tensor(self) -> torch.Tensor:
        """The host copy as a flat writable tensor; the head moves to the host."""
        if self.head != HEAD_AT_CPU and self.head != SYNCED:
            self._to_cpu()
        self.head = HEAD_AT_CPU
        return self._cpu

    def cpu_data(self) -> np.ndarray:
        """Read-only flat numpy view of the host copy."""
        if self.head != HEAD_AT_CPU and self.head != SYNCED:
            self._to_cpu()
        return self._cpu_np_readonly

    def mutable_cpu_data(self) -> np.ndarray:
        """Writable flat numpy view of the host copy; the head moves to the host."""
        if self.head != HEAD_AT_CPU and self.head != SYNCED:
            self._to_cpu()
        self.head = HEAD_AT_CPU
        return self._cpu_np

    # --- device side -----------------------------------------------------------------------
    def gpu_data(self) -> torch.Tensor:
        """The device copy as a flat tensor, synced from the host when newer there (read-only
        use)."""
        self._to_gpu()
        return self._gpu

    def mutable_gpu_data(self) -> torch.Tensor:
        """The device copy as a flat writable tensor; the head moves to the device."""
        self._to_gpu()
        self.head = HEAD_AT_GPU
        return self._gpu

    def set_cpu_data(self, array: np.ndarray) -> None:
        """Copy ``array`` (flat, ``size`` elements) into the host copy."""
        self.mutable_cpu_tensor().copy_(torch.as_tensor(np.ascontiguousarray(array).reshape(-1)))

    # --- current-mode accessors used by layer math -------------------------------------------
    def device_tensor(self) -> torch.Tensor:
        """The copy for the current mode (device in GPU mode, host in CPU mode), read-only use."""
        if common.mode() == common.GPU:
            return self.gpu_data()
        if self.head != HEAD_AT_CPU and self.head != SYNCED:
            self._to_cpu()
        return self._cpu

    def mutable_device_tensor(self) -> torch.Tensor:
        """The writable copy for the current mode; the head moves to that side."""
        if common.mode() == common.GPU:
            return self.mutable_gpu_data()
        if self.head != HEAD_AT_CPU and self.head != SYNCED:
            self._to_cpu()
        self.head = HEAD_AT_CPU
        return self._cpu
