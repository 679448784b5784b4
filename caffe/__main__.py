"""``python -m caffe <command> [flags]``: the ``caffe`` command (see :mod:`caffe.tools.cli`)."""

import sys

from caffe.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
