"""Sphinx configuration for caffepy's docs.

Sphinx because the Python API reference comes from the code itself (autodoc reads the
docstrings the test suite requires), with MyST so the guide pages are plain Markdown that
renders on GitHub too; the CLI and layer references are generated at build time by the
directives in ``_ext/caffe_sphinx.py``. Build: ``python -m sphinx -W --keep-going -b html docs
docs/_build/html``.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))
# The package from this tree even when it is not installed.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

project = "caffepy"
copyright = "caffepy authors; BVLC Caffe by BAIR/BVLC"
import caffe  # noqa: E402

release = caffe.__version__
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "caffe_sphinx"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "README.md", "_ext"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = True
html_theme = "alabaster"
html_theme_options = {"description": "BVLC Caffe 1.0 in Python on PyTorch"}
# Type hints name short targets (``type``, ``DataTransformer``) that several caffe classes
# define as attributes or re-export; autodoc's resolution of those is ambiguous, not wrong.
suppress_warnings = ["ref.python"]
