"""SyncedMemory head-state transitions, state by state, and read-only host views."""

import numpy as np
import pytest
import torch

from caffe.syncedmem import HEAD_AT_CPU, HEAD_AT_GPU, SYNCED, UNINITIALIZED, SyncedMemory

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_initial_state_and_zero_fill():
    mem = SyncedMemory(10)
    assert mem.head == UNINITIALIZED
    data = mem.cpu_data()
    assert mem.head == HEAD_AT_CPU
    assert data.shape == (10,) and not data.any()


def test_mutable_cpu_moves_head_and_writes_show():
    mem = SyncedMemory(4)
    mem.mutable_cpu_data()[:] = [1, 2, 3, 4]
    assert mem.head == HEAD_AT_CPU
    np.testing.assert_array_equal(mem.cpu_data(), [1, 2, 3, 4])
    assert mem.head == HEAD_AT_CPU


def test_cpu_data_view_refuses_writes():
    mem = SyncedMemory(3)
    view = mem.cpu_data()
    with pytest.raises(ValueError):
        view[0] = 1.0
    # the writable view still works and is seen through the read-only one
    mem.mutable_cpu_data()[0] = 5.0
    assert mem.cpu_data()[0] == 5.0


def test_gpu_access_without_cuda_is_a_caffe_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    from caffe.errors import CaffeError

    mem = SyncedMemory(3)
    with pytest.raises(CaffeError, match="CUDA is not available"):
        mem.gpu_data()


@cuda
def test_transitions_through_gpu():
    mem = SyncedMemory(3)
    mem.mutable_cpu_data()[:] = [1, 2, 3]
    g = mem.gpu_data()
    assert mem.head == SYNCED
    assert g.tolist() == [1, 2, 3]
    mem.mutable_gpu_data().mul_(2)
    assert mem.head == HEAD_AT_GPU
    np.testing.assert_array_equal(mem.cpu_data(), [2, 4, 6])
    assert mem.head == SYNCED
    mem.mutable_cpu_data()[0] = 7
    assert mem.head == HEAD_AT_CPU
    assert mem.gpu_data()[0].item() == 7
    assert mem.head == SYNCED


@cuda
def test_uninitialized_to_gpu():
    mem = SyncedMemory(2)
    assert mem.gpu_data().sum().item() == 0
    assert mem.head == HEAD_AT_GPU


def test_dtype_float64():
    mem = SyncedMemory(2, torch.float64)
    assert mem.cpu_data().dtype == np.float64
