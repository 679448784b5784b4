"""Tools for layer authors: a finite-difference gradient checker, as Caffe's test utilities, and
the Python-layer tutorials' ``test_gradient_for_python_layer`` built on it."""

from caffe.testing.gradient_check import GradientChecker, GradientCheckError
from caffe.testing.python_layer import test_gradient_for_python_layer

__all__ = ["GradientChecker", "GradientCheckError", "test_gradient_for_python_layer"]
