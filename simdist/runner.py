"""Runs many goodput searches: serially, over local processes (`--jobs N`) or on a Ray cluster
(`--ray-address`), with a tqdm progress bar. Results come back in task order.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm

from simdist.goodput import GoodputResult, GoodputTask, search_goodput
from simdist.profile import LatencyProfile
from simdist.workload import Workload

logger = logging.getLogger(__name__)
_CTX: tuple[LatencyProfile, Workload] | None = None  # per worker process, set by _init


def _init(profile: LatencyProfile, workload: Workload) -> None:
    global _CTX
    _CTX = (profile, workload)


def _run(task: GoodputTask) -> GoodputResult:
    assert _CTX is not None
    return search_goodput(task, *_CTX)


class TaskRunner:
    """`jobs` local worker processes (1 = in-process), or Ray when `ray_address` is given."""

    def __init__(self, profile: LatencyProfile, workload: Workload, jobs: int = 1,
                 ray_address: str | None = None, progress: bool = True) -> None:
        if jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {jobs}")
        self.profile, self.workload, self.jobs = profile, workload, jobs
        self.ray_address, self.progress = ray_address, progress
        self._pool: ProcessPoolExecutor | None = None

    def run(self, tasks: Sequence[GoodputTask], desc: str) -> list[GoodputResult]:
        if not tasks:
            return []
        if self.ray_address is not None:
            return self._run_ray(tasks, desc)
        bar = tqdm(total=len(tasks), desc=desc, disable=not self.progress, leave=False)
        try:
            if self.jobs == 1:
                out = []
                for t in tasks:
                    out.append(search_goodput(t, self.profile, self.workload))
                    bar.update()
                return out
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.jobs, mp.get_context("fork"), _init,
                                                 (self.profile, self.workload))
            futures = [self._pool.submit(_run, t) for t in tasks]
            for f in futures:
                f.add_done_callback(lambda _: bar.update())
            return [f.result() for f in futures]
        finally:
            bar.close()

    def _run_ray(self, tasks: Sequence[GoodputTask], desc: str) -> list[GoodputResult]:
        import ray  # lazy: only for --ray-address

        if not ray.is_initialized():
            ray.init(address=self.ray_address, log_to_driver=False)
        remote = ray.remote(search_goodput)
        prof, wl = ray.put(self.profile), ray.put(self.workload)
        refs = [remote.remote(t, prof, wl) for t in tasks]
        logger.info("%s: %d searches submitted to Ray at %s", desc, len(refs), self.ray_address)
        return ray.get(refs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
