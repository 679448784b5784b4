"""Whole nets from C++ Caffe: load the prototxt and Caffe's .caffemodel, reproduce every blob."""

from pathlib import Path

import numpy as np
import pytest

import caffe

from layer_case import FWD_TOL

NETS = Path(__file__).parent / "golden" / "nets"
NAMES = ["lenet", "mini_inception", "mini_resnet", "legacy_v1"]


def load(name):
    with np.load(NETS / f"{name}.npz") as npz:
        return {k: npz[k] for k in npz.files}


def blob_tol(value: np.ndarray) -> dict:
    """The golden README's forward tolerance (layer_case.FWD_TOL, derived there for values of
    order 1), its absolute term scaled by the blob's largest value where that is above 1:
    rounding errors scale with the values summed. (mini_resnet's BatchNorm with zero
    statistics multiplies by 1 / sqrt(eps) = 316, so its conv2 reaches 3e5, and where terms
    of that size cancel the error is ~0.1.)"""
    return dict(rtol=FWD_TOL["rtol"], atol=FWD_TOL["atol"] * max(1.0, float(np.abs(value).max())))


@pytest.mark.parametrize("name", NAMES)
def test_golden_net_reproduces_every_blob(name):
    golden = load(name)
    net = caffe.Net(str(NETS / f"{name}.prototxt"), str(NETS / f"{name}.caffemodel"), caffe.TEST)
    inputs = {k.split("/", 1)[1]: v for k, v in golden.items() if k.startswith("input/")}
    assert sorted(inputs) == sorted(net.inputs)
    net.forward(**inputs)
    expected = {k.split("/", 1)[1]: v for k, v in golden.items() if k.startswith("blob/")}
    assert sorted(expected) == sorted(net.blobs), "blob names (split blobs included) differ"
    for blob_name, value in expected.items():
        np.testing.assert_allclose(net.blobs[blob_name].data, value, **blob_tol(value),
                                   err_msg=f"{name}: blob {blob_name}")


@pytest.mark.parametrize("name", NAMES)
def test_caffemodel_round_trip(name, tmp_path):
    """A caffemodel caffepy saves (binary and HDF5) loads back identically."""
    net = caffe.Net(str(NETS / f"{name}.prototxt"), str(NETS / f"{name}.caffemodel"), caffe.TEST)
    for ext, save in ((".caffemodel", net.save), (".h5", net.save_hdf5)):
        path = str(tmp_path / f"copy{ext}")
        save(path)
        again = caffe.Net(str(NETS / f"{name}.prototxt"), path, caffe.TEST)
        assert list(again.params) == list(net.params)
        for layer, blobs in net.params.items():
            for a, b in zip(blobs, again.params[layer]):
                np.testing.assert_array_equal(a.data, b.data)


def test_cached_blob_views_follow_later_forwards():
    """pycaffe scripts keep `out = net.blobs['prob'].data` and read it after each forward."""
    golden = load("mini_resnet")
    net = caffe.Net(str(NETS / "mini_resnet.prototxt"), str(NETS / "mini_resnet.caffemodel"),
                    caffe.TEST)
    (data_name,) = net.inputs
    views = {name: blob.data for name, blob in net.blobs.items()}
    first = golden[f"input/{data_name}"]
    net.forward(**{data_name: first[::-1].copy()})
    net.forward(**{data_name: first})
    for name, view in views.items():
        value = golden[f"blob/{name}"]
        np.testing.assert_allclose(view, value, **blob_tol(value),
                                   err_msg=name)
