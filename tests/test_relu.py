import pytest

from in_place_case import check_in_place
from layer_case import gradient_check, run_golden_case


@pytest.mark.parametrize("case", ["relu", "relu_leaky"])
def test_golden(case):
    run_golden_case(case)


@pytest.mark.parametrize("param", ["type: 'ReLU'",
                                   "type: 'ReLU' relu_param { negative_slope: 0.1 }"])
def test_gradient(param):
    gradient_check(param, [(2, 3, 4, 5)], kink=0.0, kink_range=1e-2)


def test_in_place_matches_separate_blobs():
    check_in_place("type: 'ReLU' relu_param { negative_slope: 0.1 }", (2, 3, 4))
