"""Fillers: each type's values or statistics, sparsity, variance norms, seeding, errors."""

import math

import numpy as np
import pytest

import caffe
from caffe.blob import Blob
from caffe.errors import CaffeError
from caffe.filler import fill
from caffe.proto import caffe_pb2


def filled(shape, **kw):
    blob = Blob(shape)
    fill(blob, caffe_pb2.FillerParameter(**kw))
    return blob.data.copy()


def test_constant_and_uniform():
    assert (filled([2, 3], type="constant", value=1.5) == 1.5).all()
    u = filled([100, 100], type="uniform", min=-2, max=3)
    assert u.min() >= -2 and u.max() <= 3 and abs(u.mean() - 0.5) < 0.05


def test_gaussian_statistics_and_sparse():
    g = filled([200, 200], type="gaussian", mean=1, std=2)
    assert abs(g.mean() - 1) < 0.05 and abs(g.std() - 2) < 0.05
    s = filled([100, 400], type="gaussian", std=1, sparse=20)  # 20 / 100 outputs non-zero
    assert abs((s != 0).mean() - 0.2) < 0.01


def test_positive_unitball_rows_sum_to_one():
    p = filled([5, 3, 4], type="positive_unitball")
    assert (p >= 0).all()
    np.testing.assert_allclose(p.reshape(5, -1).sum(axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize("norm,n", [("FAN_IN", 3 * 4 * 5), ("FAN_OUT", 200 * 4 * 5),
                                    ("AVERAGE", (3 * 4 * 5 + 200 * 4 * 5) / 2)])
def test_xavier_and_msra_scale(norm, n):
    vn = caffe_pb2.FillerParameter.VarianceNorm.Value(norm)
    x = filled([200, 3, 4, 5], type="xavier", variance_norm=vn)
    bound = math.sqrt(3 / n)
    assert x.max() <= bound and x.min() >= -bound and x.max() > 0.95 * bound
    m = filled([200, 3, 4, 5], type="msra", variance_norm=vn)
    assert abs(m.std() - math.sqrt(2 / n)) / math.sqrt(2 / n) < 0.05


def test_bilinear_kernel_values():
    b = filled([2, 1, 4, 4], type="bilinear")
    w = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(b[1, 0], np.outer(w, w))
    with pytest.raises(CaffeError, match="square"):
        filled([1, 1, 3, 4], type="bilinear")


def test_seed_makes_fills_repeatable():
    caffe.set_random_seed(5)
    a = filled([10], type="gaussian")
    caffe.set_random_seed(5)
    b = filled([10], type="gaussian")
    np.testing.assert_array_equal(a, b)


def test_unknown_filler_and_unsupported_sparsity():
    with pytest.raises(CaffeError, match="Unknown filler name: 'gauss'"):
        filled([2], type="gauss")
    with pytest.raises(CaffeError, match="Sparsity not supported"):
        filled([2, 2], type="xavier", sparse=1)
