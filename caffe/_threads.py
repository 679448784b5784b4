"""Torch's OpenMP wait policy, chosen before torch loads.

This torch's intra-op pool is libgomp (``torch.__config__.parallel_info()``), which reads
``OMP_WAIT_POLICY`` once, when the library loads at ``import torch``. Its default spins idle
threads for a while after each parallel region; when another process holds a core, the spinning
thread and the worker it waits for share that core and a CaffeNet batch-1 forward takes ~10x as
long. ``PASSIVE`` with a short spin (``GOMP_SPINCOUNT``, below) makes idle threads sleep after
about 10 microseconds, which keeps most of the spinning's speed on a quiet machine. Values
the user set are kept, and nothing can change the policy once torch is loaded, so this module
must not import torch.
"""

from __future__ import annotations

import os
import sys

#: the policy caffepy picks when the user set none
DEFAULT_WAIT_POLICY = "PASSIVE"
#: ... with a short idle spin (libgomp spins ~100 times a microsecond): layers follow each
#: other within microseconds, and a thread that sleeps at once takes ~10-50 us to wake for
#: the next one (GoogLeNet batch 1 on an idle 2-core machine: 55 ms spinning, 75 ms PASSIVE,
#: ~60 ms with 1000 spins), while ~10 us of spinning costs little when another process wants
#: the core (same net, one core busy: ~100 ms PASSIVE, ~105-130 ms with 1000 spins, 130-260
#: ms with libgomp's default; 7 alternated runs each, benchmarks/peers/run_caffepy.py).
DEFAULT_SPIN_COUNT = "1000"

#: True when this import set OMP_WAIT_POLICY (unset by the user, torch not yet loaded)
WAIT_POLICY_SET_BY_CAFFE = "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules
#: True when torch was loaded before caffe, so OpenMP kept whatever policy it read then
TORCH_LOADED_FIRST = "torch" in sys.modules

if WAIT_POLICY_SET_BY_CAFFE:
    os.environ["OMP_WAIT_POLICY"] = DEFAULT_WAIT_POLICY
    os.environ.setdefault("GOMP_SPINCOUNT", DEFAULT_SPIN_COUNT)
