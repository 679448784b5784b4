"""Torch's OpenMP wait policy, chosen before torch loads.

This torch's intra-op pool is libgomp (``torch.__config__.parallel_info()``), which reads
``OMP_WAIT_POLICY`` once, when the library loads at ``import torch``. Its default spins idle
threads for a while after each parallel region; when another process holds a core, the spinning
thread and the worker it waits for share that core and a CaffeNet batch-1 forward takes ~10x as
long. ``PASSIVE`` makes idle threads sleep at once; a quiet machine loses nothing measurable
(benchmarks/README.md, "Framework overhead and threads"). A value the user set is kept, and
nothing can change the policy once torch is loaded, so this module must not import torch.
"""

from __future__ import annotations

import os
import sys

#: the policy caffepy picks when the user set none
DEFAULT_WAIT_POLICY = "PASSIVE"

#: True when this import set OMP_WAIT_POLICY (unset by the user, torch not yet loaded)
WAIT_POLICY_SET_BY_CAFFE = "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules
#: True when torch was loaded before caffe, so OpenMP kept whatever policy it read then
TORCH_LOADED_FIRST = "torch" in sys.modules

if WAIT_POLICY_SET_BY_CAFFE:
    os.environ["OMP_WAIT_POLICY"] = DEFAULT_WAIT_POLICY
