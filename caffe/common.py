"""Process-wide state, as Caffe's ``Caffe`` singleton holds it: mode, device, RNG, solver rank."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch

from caffe.errors import CaffeError

CPU = "CPU"
GPU = "GPU"


class _State(threading.local):
    def __init__(self) -> None:
        self.mode = CPU
        self.device_id = 0
        self.generators: dict[str, torch.Generator] = {}
        self.seed: int | None = None


_state = _State()
_solver = {"count": 1, "rank": 0, "multiprocess": False, "parallel_test": False}


def set_mode_cpu() -> None:
    """Run layers on the host (the default)."""
    _state.mode = CPU


def set_mode_gpu() -> None:
    """Run layers on the CUDA device chosen with ``set_device``."""
    if not torch.cuda.is_available():
        raise CaffeError("set_mode_gpu: no CUDA device is available (torch.cuda.is_available() is "
                         "False); use caffe.set_mode_cpu() or install a CUDA build of torch")
    _state.mode = GPU


def mode() -> str:
    """The current mode: ``"CPU"`` or ``"GPU"`` (``caffe.set_mode_cpu`` / ``set_mode_gpu``)."""
    return _state.mode


def set_device(device_id: int) -> None:
    """Select the CUDA device used in GPU mode."""
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if not 0 <= device_id < count:
            raise CaffeError(f"set_device: device {device_id} does not exist "
                             f"({count} CUDA devices)")
        torch.cuda.set_device(device_id)
    _state.device_id = device_id


def device() -> torch.device:
    """The torch device that layer math runs on in the current mode."""
    if _state.mode == GPU:
        return torch.device("cuda", _state.device_id)
    return torch.device("cpu")


def set_random_seed(seed: int) -> None:
    """Seed every random stream caffepy uses (fillers, dropout, data shuffling, crops)."""
    _state.seed = int(seed)
    _state.generators.clear()
    torch.manual_seed(int(seed))
    np.random.seed(int(seed) % (2**32))


def generator(dev: torch.device | None = None) -> torch.Generator:
    """The seeded torch generator for ``dev`` (default: the current mode's device)."""
    dev = dev or device()
    key = str(dev)
    gen = _state.generators.get(key)
    if gen is None:
        gen = torch.Generator(device=dev)
        if _state.seed is not None:
            gen.manual_seed(_state.seed)
        else:
            gen.seed()
        _state.generators[key] = gen
    return gen


@contextlib.contextmanager
def preserved_rng():
    """Run a block without moving caffe's random streams (a Net built only to transform
    another, say, must not change which numbers the data layers draw next)."""
    saved = {key: gen.get_state() for key, gen in _state.generators.items()}
    known = set(saved)
    try:
        yield
    finally:
        for key in list(_state.generators):
            if key not in known:
                del _state.generators[key]
        for key, state in saved.items():
            _state.generators[key].set_state(state)


def numpy_rng() -> np.random.Generator:
    """A numpy generator drawn from the seeded torch stream (for host-side shuffles and crops)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator(torch.device("cpu"))))
    return np.random.default_rng(seed)


def solver_count() -> int:
    """How many solvers train together (pycaffe's ``solver_count``; 1 unless data-parallel)."""
    return _solver["count"]


def set_solver_count(count: int) -> None:
    """Set the number of solvers training together; data layers shard by it."""
    _solver["count"] = int(count)


def solver_rank() -> int:
    """This process's solver rank (0 is the root solver, which logs, tests and snapshots)."""
    return _solver["rank"]


def set_solver_rank(rank: int) -> None:
    """Set this process's solver rank."""
    _solver["rank"] = int(rank)


def set_multiprocess(multiprocess: bool) -> None:
    """Mark this process as one of several solver processes (pycaffe's ``set_multiprocess``)."""
    _solver["multiprocess"] = bool(multiprocess)


def multiprocess() -> bool:
    """Whether this process is one of several solver processes."""
    return _solver["multiprocess"]


def set_parallel_test(parallel: bool) -> None:
    """caffepy: every solver scores its share of the test batches, so TEST-phase data layers
    shard by rank too (by default only TRAIN shards, and the root tests alone)."""
    _solver["parallel_test"] = bool(parallel)


def parallel_test() -> bool:
    """Whether TEST passes are split over the ranks (``caffe train -parallel_test``)."""
    return _solver.get("parallel_test", False)


def shard(phase: int) -> tuple[int, int]:
    """(solver_count, solver_rank) a data layer of ``phase`` shards its source by: the
    solvers' in TRAIN (and in TEST with the parallel test), else (1, 0)."""
    from caffe.proto import caffe_pb2

    if phase == caffe_pb2.TRAIN or _solver.get("parallel_test", False):
        return _solver["count"], _solver["rank"]
    return 1, 0


def shared_numpy_rng(name: str) -> np.random.Generator:
    """A generator that draws the same numbers on every solver of a multi-process run (the
    solver's random_seed, without the rank; a fixed seed when none is set), for permutations
    that the ranks then slice; ``name`` (the layer's) keeps two layers' streams apart. With one
    solver, the ordinary seeded stream (:func:`numpy_rng`)."""
    if _solver["count"] <= 1:
        return numpy_rng()
    import zlib

    seed = _solver.get("shared_seed")
    return np.random.default_rng([0 if seed is None else int(seed), zlib.crc32(name.encode())])


def set_shared_seed(seed: int | None) -> None:
    """The seed of :func:`shared_numpy_rng` (the Solver sets its random_seed)."""
    _solver["shared_seed"] = seed


def root_solver() -> bool:
    """Whether this is the root solver (rank 0)."""
    return _solver["rank"] == 0


def has_nccl() -> bool:
    """Whether NCCL all-reduce is available (CUDA torch with NCCL), as pycaffe's ``has_nccl``."""
    return torch.cuda.is_available() and torch.distributed.is_nccl_available()


def set_num_threads(count: int) -> None:
    """Torch's intra-op thread count (as ``OMP_NUM_THREADS`` sets it at start-up).

    One thread is often fastest for tiny nets and on a machine where other processes hold the
    cores; see README, "Threads".
    """
    if int(count) < 1:
        raise CaffeError(f"set_num_threads: thread count must be at least 1, got {count}")
    torch.set_num_threads(int(count))


def num_threads() -> int:
    """Torch's intra-op thread count."""
    return torch.get_num_threads()


def threads_summary() -> str:
    """One log line: intra-op threads, OMP_NUM_THREADS and the OpenMP wait policy in force."""
    import os

    from caffe import _threads

    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    if _threads.WAIT_POLICY_SET_BY_CAFFE:
        origin = "set by caffe"
    elif _threads.TORCH_LOADED_FIRST:
        origin = "torch was imported before caffe; OpenMP kept the policy it read then"
    else:
        origin = "from the environment"
    return (f"CPU threads: {torch.get_num_threads()} (OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), OMP_WAIT_POLICY={policy} "
            f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'default')} ({origin})")
