"""Joining a multi-process training job on ``torch.distributed``, and noticing when it breaks.

Two launchers are understood besides caffepy's own spawn (:func:`caffe.parallel.train_parallel`):

- **torchrun** (``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every worker;
- **Slurm** (``srun``) sets ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` and the node
  list; the first node of ``SLURM_JOB_NODELIST`` hosts the rendezvous unless ``MASTER_ADDR`` is
  set, on ``MASTER_PORT`` or a port derived from ``SLURM_JOB_ID``.

:func:`launch_environment` reads them; torchrun's win when both are present (torchrun under
srun). The backend is Gloo on the CPU and NCCL on CUDA, the device ``LOCAL_RANK``.

A :class:`Watchdog` thread in every rank beats a counter in the process group's store once per
second. Rank 0 watches every rank's counter, the others watch rank 0's: a rank whose counter
stands still for ``timeout_s`` seconds (dead, stopped, or stuck with its interpreter frozen) is
declared lost, the loss is written to the store, and every rank that reads it leaves with exit
status 1 and a message naming the lost rank. After a failed collective (a peer's connection
closed), :meth:`Watchdog.lost_ranks` says which counters stopped, for the error message.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch.distributed as dist

from caffe.errors import CaffeError

log = logging.getLogger("caffe")

# A dead or hung worker is noticed within this many seconds by default (``-timeout``).
DEFAULT_TIMEOUT_S = 300.0
HEARTBEAT_S = 1.0


class PeerLostError(CaffeError):
    """A collective failed because another rank died, hung or failed (this rank is fine)."""


@dataclass(frozen=True)
class LaunchEnvironment:
    """Where this process stands in a job started by torchrun or Slurm."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" or "slurm"

    def describe(self) -> str:
        """One log line: rank, world size, local rank, launcher and rendezvous address."""
        return (f"rank {self.rank} of {self.world_size} (local rank {self.local_rank}, "
                f"{self.launcher}, rendezvous {self.master_addr}:{self.master_port})")


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise CaffeError(f"environment variable {name}={environ[name]!r} is not an integer") \
            from None


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[03-05,07],cpu1`` -> ``gpu03``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match or not match.group(1):
        raise CaffeError(f"cannot read the Slurm node list {nodelist!r}")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def launch_environment(environ: Mapping[str, str] | None = None) -> LaunchEnvironment | None:
    """The torchrun or Slurm job this process belongs to, or None when neither started it."""
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in environ:
                raise CaffeError(f"RANK and WORLD_SIZE are set but {name} is not; start the "
                                 f"job with torchrun, or set MASTER_ADDR and MASTER_PORT")
        return LaunchEnvironment(_int(environ, "RANK"), _int(environ, "WORLD_SIZE"),
                                 _int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else 0,
                                 environ["MASTER_ADDR"], _int(environ, "MASTER_PORT"),
                                 "torchrun")
    if "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ:
        addr = environ.get("MASTER_ADDR")
        if not addr:
            nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
            if not nodelist:
                raise CaffeError("Slurm job without SLURM_JOB_NODELIST: set MASTER_ADDR to the "
                                 "host of rank 0")
            addr = first_slurm_host(nodelist)
        if "MASTER_PORT" in environ:
            port = _int(environ, "MASTER_PORT")
        else:
            # The same port on every task of one job, different for jobs sharing a node.
            port = 15000 + _int(environ, "SLURM_JOB_ID") % 20000 if "SLURM_JOB_ID" in environ \
                else 29500
        return LaunchEnvironment(_int(environ, "SLURM_PROCID"), _int(environ, "SLURM_NTASKS"),
                                 _int(environ, "SLURM_LOCALID") if "SLURM_LOCALID" in environ
                                 else 0, addr, port, "slurm")
    return None


# Collectives (and the rendezvous, while the ranks start at their own pace) wait at least this
# long; a rank that stops beating is noticed sooner, after -timeout, by the Watchdog.
MIN_COLLECTIVE_TIMEOUT_S = 60.0


def init_process_group(backend: str, rank: int, world_size: int, init_method: str,
                       timeout_s: float) -> None:
    """Join the default process group; every collective waits at most
    max(``timeout_s``, MIN_COLLECTIVE_TIMEOUT_S) seconds."""
    timeout = datetime.timedelta(seconds=max(timeout_s, MIN_COLLECTIVE_TIMEOUT_S))
    try:
        dist.init_process_group(backend, init_method=init_method, world_size=world_size,
                                rank=rank, timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        raise CaffeError(f"cannot join the {backend} group at {init_method!r} as rank {rank} of "
                         f"{world_size}: {exc}") from exc


def default_store() -> dist.Store | None:
    """The default process group's store, where the heartbeats go (None if unavailable)."""
    get = getattr(dist.distributed_c10d, "_get_default_store", None)
    if get is None:
        return None
    try:
        return dist.PrefixStore("caffe/", get())
    except (RuntimeError, ValueError):
        return None


class Watchdog:
    """Heartbeats through ``store`` and the verdict when a rank stops beating (see the module
    docstring). ``start`` launches the daemon thread; ``close`` stops it."""

    def __init__(self, store: dist.Store, rank: int, count: int, timeout_s: float,
                 interval_s: float = HEARTBEAT_S) -> None:
        self.store = store
        self.rank = rank
        self.count = count
        self.timeout_s = float(timeout_s)
        self.interval_s = min(float(interval_s), self.timeout_s / 4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False
        self._root_done = False

    # --- the thread --------------------------------------------------------------------------
    def start(self) -> Watchdog:
        """Register this rank as alive and start the heartbeat thread; returns self."""
        self.store.add(f"alive/{self.rank}", 1)
        self._thread = threading.Thread(target=self._run, name="caffe-watchdog", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the heartbeat thread."""
        self._stop.set()

    def _run(self) -> None:
        watched = range(self.count) if self.rank == 0 else [0]
        seen = {r: (-1, time.monotonic()) for r in watched if r != self.rank}
        while not self._stop.wait(self.interval_s):
            try:
                self.store.add(f"alive/{self.rank}", 1)
                if self.store.check(["lost"]):
                    self._leave(self.store.get("lost").decode())
                now = time.monotonic()
                for r, (beats, since) in list(seen.items()):
                    current = self.store.add(f"alive/{r}", 0)
                    if self.store.check([f"done/{r}"]):
                        del seen[r]  # finished cleanly: its heartbeat stops on purpose
                        self._root_done = self._root_done or r == 0
                    elif current != beats:
                        seen[r] = (current, now)
                    elif now - since > self.timeout_s:
                        message = (f"solver rank {r} of {self.count} was lost: no heartbeat for "
                                   f"{now - since:.0f} s (-timeout {self.timeout_s:g}); it died "
                                   f"or hangs")
                        self.store.set("lost", message)
                        self._leave(message)
            except Exception as exc:  # noqa: BLE001  (the store itself is gone)
                if self._stop.is_set() or self._root_done:
                    return  # closing, or rank 0 finished and took its store along
                self._leave(f"solver rank {self.rank} lost the rendezvous store (hosted by rank "
                            f"0 or its launcher): solver rank 0 of {self.count} is gone "
                            f"({type(exc).__name__}: {exc})")

    def _leave(self, message: str) -> None:
        """Exit now: the main thread may be blocked in a collective that never returns."""
        self._stop.set()
        log.error("%s", message)
        print(f"caffe train: error: {message}", file=sys.stderr, flush=True)
        os._exit(1)

    # --- after a failed collective -----------------------------------------------------------
    def verdict(self) -> str | None:
        """What a rank wrote to the store about a lost or failed rank, if anything."""
        try:
            return self.store.get("lost").decode() if self.store.check(["lost"]) else None
        except Exception:  # noqa: BLE001
            return None

    def lost_ranks(self, window_s: float | None = None) -> list[int] | None:
        """The ranks whose heartbeat did not move within ``window_s`` (default three beats);
        None when the store cannot be read (its host, rank 0 or its launcher, is gone)."""
        window_s = 3 * self.interval_s if window_s is None else window_s
        try:
            before = [self.store.add(f"alive/{r}", 0) for r in range(self.count)]
            time.sleep(window_s)
            after = [self.store.add(f"alive/{r}", 0) for r in range(self.count)]
        except Exception:  # noqa: BLE001
            return None
        return [r for r in range(self.count) if r != self.rank and before[r] == after[r]]

    def report_lost(self, exc: BaseException) -> PeerLostError:
        """The error for a failed collective: another rank's verdict when one was written (a
        rank that failed says why), else the ranks whose heartbeat stopped; the verdict is
        written to the store so that the other ranks leave too."""
        message = self.verdict()
        if message is not None:
            self.close()
            return PeerLostError(f"{message} (collective failed on solver rank {self.rank}: "
                                 f"{exc})")
        lost = self.lost_ranks()
        if lost is None:
            message = (f"solver rank 0 of {self.count} (host of the rendezvous store) was lost; "
                       f"the collective failed: {exc}")
        elif lost:
            names = ", ".join(str(r) for r in lost)
            message = (f"solver rank {names} of {self.count} was lost (its heartbeat stopped); "
                       f"the collective failed: {exc}")
        else:
            message = (f"a collective failed on solver rank {self.rank} of {self.count} while "
                       f"every rank is alive (a rank slower than -timeout "
                       f"{self.timeout_s:g} s?): {exc}")
        if lost is not None:
            with contextlib.suppress(Exception):
                self.store.set("lost", message)
        self.close()
        return PeerLostError(message)

    def finish(self) -> None:
        """A clean end: stop beating, say so, and (rank 0, whose process may host the store)
        stay until every rank has said so, so that none of them loses the store first."""
        if self._finished:
            return
        self._finished = True
        self.close()
        self.store.set(f"done/{self.rank}", "1")
        self.store.add("finished", 1)
        if self.rank != 0:
            return
        deadline = time.monotonic() + self.timeout_s
        while (self.store.add("finished", 0) < self.count and time.monotonic() < deadline
               and not self.store.check(["lost"])):
            time.sleep(0.01)

    def fail(self, message: str) -> None:
        """This rank is leaving on an error: tell the others why, so they name it."""
        self._finished = True  # no clean finish after this
        self.close()
        try:
            if not self.store.check(["lost"]):
                self.store.set("lost", message)
        except Exception:  # noqa: BLE001
            pass

    # --- the root's extra work ---------------------------------------------------------------
    def release(self, key: str) -> None:
        """Rank 0: the others may go past ``key``."""
        self.store.set(f"go/{key}", "1")

    def wait_release(self, key: str) -> None:
        """Other ranks: wait until rank 0 calls ``release(key)``, however long it takes while
        rank 0 is alive (the thread leaves the process when it is lost)."""
        while not self.store.check([f"go/{key}"]):
            time.sleep(0.01)
