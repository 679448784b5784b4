"""Tools for layer authors: a finite-difference gradient checker, as Caffe's test utilities."""

from caffe.testing.gradient_check import GradientChecker, GradientCheckError

__all__ = ["GradientChecker", "GradientCheckError"]
