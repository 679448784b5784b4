"""coord_map: affine coordinate maps through conv/pool/deconv/crop stacks, checked against
offsets worked out by hand, and the crop() helper checked on a real net."""

from __future__ import annotations

import numpy as np
import pytest

from caffe.coord_map import (
    AxisMismatchException,
    UndefinedMapException,
    compose,
    coord_map,
    coord_map_from_to,
    crop,
    inverse,
)
from caffe.errors import CaffeError
from caffe.net_spec import NetSpec, to_proto
from caffe.net_spec import layers as L
from caffe.net_spec import params as P


def coord_net_spec(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0) -> NetSpec:
    """data -> conv(ks, stride, pad) -> max pool(pool) -> deconv(2 * dstride, dstride, dpad)."""
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.aux = L.Input(shape=dict(dim=[2, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=ks, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool, pad=0)
    deconv_ks = [s * 2 for s in dstride] if isinstance(dstride, list) else dstride * 2
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=deconv_ks, stride=dstride,
                               pad=dpad)
    return n


def test_single_layer_maps():
    n = coord_net_spec(ks=3, stride=1, pad=0, pool=2, dstride=2)
    # conv: a = 1/s, b = (p - (k-1)/2) / s = (0 - 1) / 1
    assert coord_map(n.conv.fn) == (1, 1, -1)
    # pool 2/2: a = 1/2, b = (0 - 1/2) / 2
    assert coord_map(n.pool.fn) == (1, 0.5, -0.25)
    # deconv k4 s2: a = 2, b = (4-1)/2 - 0
    assert coord_map(n.deconv.fn) == (1, 2, 1.5)
    assert coord_map(L.ReLU(n.conv).fn) == (None, 1, 0)
    dilated = L.Convolution(n.data, kernel_size=3, dilation=2, pad=1, stride=2)
    # extent (3-1)*2+1 = 5: b = (1 - 2) / 2
    assert coord_map(dilated.fn) == (1, 0.5, -0.5)


def test_conv_pool_deconv():
    # 2x pool then 2x deconv: conv shift -1, pool at scale 2 adds -0.5, deconv +1.5 -> 0.
    n = coord_net_spec()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert (ax, a, b) == (1, 1, 0)
    # 4x pool (b = -1.5/4) then 4x deconv (k8: b = 3.5): -1 + 4 * -0.375 + 3.5 = 1 -> inverse -1.
    n = coord_net_spec(pool=4, dstride=4)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert (ax, a, b) == (1, 1, -1)


def test_pass_through_and_1x1_conv_are_identity():
    n = coord_net_spec()
    expected = coord_map_from_to(n.deconv, n.data)
    n.relu = L.ReLU(n.deconv)
    n.conv1x1 = L.Convolution(n.relu, num_output=10, kernel_size=1, stride=1, pad=0)
    for top in (n.relu, n.conv1x1):
        assert coord_map_from_to(top, n.data) == expected


@pytest.mark.parametrize("pad", [1, 4, 10])
def test_padding(pad):
    # Unpadded, the stack is the identity (test_conv_pool_deconv); conv padding moves the
    # output origin before the input's, deconv padding after it.
    a, b = 1, 0
    n = coord_net_spec(pad=pad)
    assert coord_map_from_to(n.deconv, n.data)[1:] == (a, b - pad)
    n = coord_net_spec(dpad=pad)
    assert coord_map_from_to(n.deconv, n.data)[1:] == (a, b + pad)
    n = coord_net_spec(pad=pad, dpad=pad)
    assert coord_map_from_to(n.deconv, n.data)[1:] == (a, b)


def test_multi_bottom_conv_maps_each_pair_alike():
    n = coord_net_spec()
    n.conv_data, n.conv_aux = L.Convolution(n.data, n.aux, ntop=2, num_output=10, kernel_size=5,
                                            stride=2, pad=0)
    # a = 1/2, b = (0 - 2) / 2 = -1, inverted: a = 2, b = 2.
    assert coord_map_from_to(n.conv_data, n.data) == (1, 2, 2)
    assert coord_map_from_to(n.conv_aux, n.aux) == (1, 2, 2)


def test_rectangular_kernels_map_per_axis():
    n3x3 = coord_net_spec(ks=3, stride=1, pad=0)
    n5x5 = coord_net_spec(ks=5, stride=2, pad=10)
    n3x5 = coord_net_spec(ks=[3, 5], stride=[1, 2], pad=[0, 10])
    ax33, a33, b33 = coord_map_from_to(n3x3.deconv, n3x3.data)
    ax55, a55, b55 = coord_map_from_to(n5x5.deconv, n5x5.data)
    ax35, a35, b35 = coord_map_from_to(n3x5.deconv, n3x5.data)
    assert ax33 == ax55 == ax35 == 1
    assert (a35[0], b35[0]) == (a33, b33)
    assert (a35[1], b35[1]) == (a55, b55)
    # 5x5 stride 2 pad 10: conv (1/2, (10 - 2) / 2 = 4); from the deconv side pool gives
    # (2, 1.5), conv level (1, 1), data level (1/2, 1 + 4) = (0.5, 5); inverted (2, -10).
    assert (a55, b55) == (2, -10)
    assert (a33, b33) == (1, 0)


def test_legacy_h_w_fields_and_message_dicts():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 50, 50]))
    n.conv = L.Convolution(n.data, convolution_param=dict(kernel_h=3, kernel_w=5, pad_h=0,
                                                          pad_w=2, num_output=1))
    n.pool = L.Pooling(n.conv, pooling_param=dict(pool=P.Pooling.MAX, kernel_size=3, stride=1,
                                                  pad=1))
    ax, a, b = coord_map_from_to(n.pool, n.data)
    # conv b = (0 - 1, 2 - 2) = (-1, 0); pool 3/1/1: b = 0; inverse -> (1, 0).
    assert ax == 1 and list(a) == [1, 1] and list(b) == [1, 0]
    n.gap = L.Pooling(n.pool, global_pooling=True, pool=P.Pooling.AVE)
    with pytest.raises(UndefinedMapException, match="global_pooling"):
        coord_map(n.gap.fn)


def test_nd_conv():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 100, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=[3, 3, 3], stride=[1, 1, 1],
                           pad=[0, 1, 2])
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2, pad=0)
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=4, stride=2, pad=0)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert ax == 1 and len(a) == len(b) == 3 and np.all(a == 1)
    np.testing.assert_array_equal(b, [0, -1, -2])


def test_crop_of_crop():
    n = coord_net_spec()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    for offset in (0, 3, 7):
        n.crop = L.Crop(n.deconv, n.data, axis=2, offset=offset)
        assert coord_map_from_to(n.crop, n.data) == (ax, a, b + offset)


def test_crop_helper_writes_the_crop_layer():
    # FCN-style: a padded conv, 2x pool, 2x deconv. conv b = 100 - 1 = 99; pool and deconv add
    # 1 at scale 1 (see test_conv_pool_deconv) -> the deconv output starts 100 pixels early.
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=3, pad=100)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.up = L.Deconvolution(n.pool, num_output=2, kernel_size=4, stride=2, bias_term=False)
    assert coord_map_from_to(n.up, n.data) == (1, 1, -100)
    n.score = crop(n.up, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["up", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [100]


def test_catch_unconnected():
    n = coord_net_spec()
    n.ip = L.InnerProduct(n.deconv, num_output=10)
    with pytest.raises(RuntimeError, match="not joined by spatial layers"):
        coord_map_from_to(n.ip, n.data)


def test_catch_scale_mismatch():
    n = coord_net_spec(pool=3, dstride=2)
    with pytest.raises(AssertionError, match="scale mismatch"):
        crop(n.deconv, n.data)


def test_catch_negative_and_fractional_crop():
    n = coord_net_spec(dpad=10)
    with pytest.raises(AssertionError, match="negative offset"):
        crop(n.deconv, n.data)
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=2, pad=1)
    with pytest.raises(CaffeError, match="noninteger offset"):
        crop(n.conv, n.data)


def test_compose_and_inverse():
    assert compose((None, 1, 0), (2, 0.5, 1)) == (2, 0.5, 1)
    assert compose((1, 2, 3), (None, 1, 0)) == (1, 2, 3)
    assert compose((1, 2, 3), (1, 0.5, 1)) == (1, 1.0, 5)
    assert inverse((1, 2, 3)) == (1, 0.5, -1.5)
    with pytest.raises(AxisMismatchException):
        compose((1, 1, 0), (2, 1, 0))
    with pytest.raises(UndefinedMapException, match="InnerProduct"):
        coord_map(L.InnerProduct(L.Input(), num_output=1).fn)


def test_crop_aligns_a_real_net():
    """A padded conv whose kernel is a centered delta shifts the image by pad - 1; the Crop
    layer that crop() writes must undo exactly that shift."""
    caffe = pytest.importorskip("caffe")
    missing = {"Input", "Convolution", "Crop"} - set(caffe.layer_type_list())
    if missing:
        pytest.skip(f"layers not yet available: {sorted(missing)}")
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 6, 7]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=3, pad=5, bias_term=False)
    n.aligned = crop(n.conv, n.data)
    proto = n.to_proto()
    assert list(proto.layer[-1].crop_param.offset) == [4]
    net = caffe.Net(proto, caffe.TEST)
    weights = np.zeros((1, 1, 3, 3), dtype=np.float32)
    weights[0, 0, 1, 1] = 1
    net.params["conv"][0].data[...] = weights
    image = np.arange(42, dtype=np.float32).reshape(1, 1, 6, 7)
    out = net.forward(data=image)
    assert net.blobs["conv"].data.shape == (1, 1, 14, 15)
    np.testing.assert_array_equal(out["aligned"], image)
    assert to_proto(n.aligned).layer[-1].type == "Crop"
