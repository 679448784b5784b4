"""layer.blobs is pycaffe's BlobVec (add_blob, indexing, len, iteration), shared with
net.params; Blob._gpu_data_ptr / _gpu_diff_ptr."""

import numpy as np
import pytest
import torch

import caffe
from caffe.blob import Blob, BlobVec
from caffe.errors import CaffeError


class AffineRows(caffe.Layer):
    """y = x W^T + b with W (3 x 2) and b (3,) added in setup, as pycaffe's tutorials do."""

    def setup(self, bottom, top):
        if not self.blobs:  # weights loaded from a caffemodel come in through LayerParameter
            self.blobs.add_blob(3, 2)
            self.blobs.add_blob(3)
            self.blobs[0].data[...] = np.arange(6).reshape(3, 2) / 10.0
            self.blobs[-1].data[...] = [0.5, -0.5, 1.0]

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].data.shape[0], 3)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data @ self.blobs[0].data.T + self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += top[0].diff.T @ bottom[0].data
        self.blobs[1].diff[...] += top[0].diff.sum(0)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff @ self.blobs[0].data


NET = """
layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 4 dim: 2 } } }
layer { name: 'aff' type: 'Python' bottom: 'x' top: 'y' %s
        python_param { module: 'test_blob_vec' layer: 'AffineRows' } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'y' top: 'z'
        inner_product_param { num_output: 2 weight_filler { type: 'constant' value: 1 } } }
layer { name: 'loss' type: 'EuclideanLoss' bottom: 'z' bottom: 'x' top: 'loss' }
"""


def _net(tmp_path, param_specs=""):
    path = tmp_path / "net.prototxt"
    path.write_text(NET % param_specs)
    return caffe.Net(str(path), caffe.TRAIN), path


def test_add_blob_in_setup_gives_a_blob_vec_shared_with_net_params(tmp_path):
    net, _ = _net(tmp_path)
    layer = net.layers[list(net._layer_names).index("aff")]
    blobs = net.params["aff"]
    assert isinstance(blobs, BlobVec) and blobs is layer.blobs
    assert len(blobs) == 2
    assert [b.shape for b in blobs] == [(3, 2), (3,)]
    assert blobs[-1] is blobs[1] and blobs[-2] is blobs[0]
    np.testing.assert_array_equal(blobs[1].data, [0.5, -0.5, 1.0])
    # Built-in layers assign their blobs as lists; they still come back as BlobVecs.
    assert isinstance(net.params["ip"], BlobVec)
    assert all(isinstance(lay.blobs, BlobVec) for lay in net.layers)
    blobs.add_blob(2, 5)  # pycaffe allows it on net.params too: it appends to the layer's vec
    assert len(layer.blobs) == 3 and layer.blobs[2].shape == (2, 5)
    assert np.all(layer.blobs[2].data == 0)


def test_python_layer_blobs_are_learnable_and_get_gradients(tmp_path):
    net, _ = _net(tmp_path)
    aff = net.params["aff"]
    assert any(p is aff[0] for p in net.learnable_params)
    assert any(p is aff[1] for p in net.learnable_params)
    x = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    net.clear_param_diffs()
    net.backward()
    # ip's weights are all ones, so dE/dy[n, k] = sum_j dE/dz[n, j] for every k.
    dz = net.blobs["z"].diff
    dy = np.repeat(dz.sum(1, keepdims=True), 3, axis=1)
    # float32 sums of <= 4 terms of magnitude ~1: a few eps32 relative, atol for values near 0.
    np.testing.assert_allclose(aff[0].diff, dy.T @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aff[1].diff, dy.sum(0), rtol=1e-5, atol=1e-6)


def test_lr_mult_zero_turns_off_python_layer_param_propagation(tmp_path):
    net, _ = _net(tmp_path, "param { lr_mult: 0 } param { lr_mult: 1 }")
    layer = net.layers[list(net._layer_names).index("aff")]
    assert layer.param_propagate_down == [False, True]


def test_python_layer_blobs_round_trip_through_caffemodel(tmp_path):
    net, path = _net(tmp_path)
    net.params["aff"][0].data[...] = np.full((3, 2), 7.0)
    net.params["aff"][1].data[...] = [1.0, 2.0, 3.0]
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    fresh = caffe.Net(str(path), caffe.TEST, weights=str(weights))
    np.testing.assert_array_equal(fresh.params["aff"][0].data, np.full((3, 2), 7.0))
    np.testing.assert_array_equal(fresh.params["aff"][1].data, [1.0, 2.0, 3.0])


def test_blob_vec_is_a_list_of_blobs():
    vec = BlobVec(dtype=torch.float64)
    vec.add_blob()
    vec.add_blob(np.int64(2), 3)
    assert len(vec) == 2 and vec[0].shape == () and vec[1].shape == (2, 3)
    assert vec[1].dtype == torch.float64
    assert [b.count for b in vec] == [1, 6]
    vec.append(Blob([4]))  # list behaviour kept for code that treats blobs as a list
    assert vec[-1].shape == (4,) and len(vec[1:]) == 2


@pytest.mark.parametrize("args, kwargs, message", [
    ((2,), {"dtype": "float"}, "takes no kwargs"),
    ((2.5,), {}, "dimensions must be ints"),
])
def test_add_blob_rejects_bad_arguments(args, kwargs, message):
    with pytest.raises(CaffeError, match=message):
        BlobVec().add_blob(*args, **kwargs)


# --- device pointers (pycaffe PR #5904) ---------------------------------------------------------
@pytest.mark.parametrize("name", ["_gpu_data_ptr", "_gpu_diff_ptr"])
def test_gpu_pointers_need_gpu_mode(name):
    caffe.set_mode_cpu()
    blob = Blob([2, 3])
    with pytest.raises(CaffeError, match="CUDA|GPU mode"):
        getattr(blob, name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_pointers_are_the_device_tensors_addresses():
    caffe.set_mode_gpu()
    blob = Blob([2, 3])
    blob.data[...] = 1.0
    blob.diff[...] = 2.0
    data_ptr, diff_ptr = blob._gpu_data_ptr, blob._gpu_diff_ptr
    assert isinstance(data_ptr, int) and data_ptr == blob.gpu_data().data_ptr()
    assert diff_ptr == blob.gpu_diff().data_ptr() and diff_ptr != data_ptr
    # Reading the pointer synced the host values to the device, as gpu_data() does.
    assert float(blob.gpu_data().sum()) == 6.0 and float(blob.gpu_diff().sum()) == 12.0
