"""Continuous-batching bookkeeping shared by decode and colocated instances, O(1) per iteration:
each request's finishing iteration is known when it joins, so an iteration only bumps a counter,
appends its end time and pops the requests that finish there.
"""
from __future__ import annotations

from simdist.sim_request import SimRequest


class DecodeBatch:
    __slots__ = ("running", "step", "step_times", "finish_at", "sum_ctx", "size")

    def __init__(self) -> None:
        self.running: dict[int, SimRequest] = {}  # rid -> request, in join order
        self.step = 0  # iterations completed
        self.step_times: list[float] = []  # end time of each completed iteration
        self.finish_at: dict[int, list[SimRequest]] = {}  # step -> requests ending there
        self.sum_ctx = 0  # KV tokens held by running requests
        self.size = 0

    def join(self, r: SimRequest) -> None:
        """Add a request with r.ctx KV tokens and r.remaining (>= 1) iterations to run."""
        r.batch = self
        r.join_step = step = self.step
        r.finish_step = f = step + r.remaining
        lst = self.finish_at.get(f)
        if lst is None:
            self.finish_at[f] = [r]
        else:
            lst.append(r)
        self.running[r.rid] = r
        self.sum_ctx += r.ctx
        self.size += 1

    def advance(self, t: float) -> list[SimRequest] | None:
        """Complete one iteration at time t (every running request gains a token); returns
        the requests that produced their last token."""
        self.step = step = self.step + 1
        self.step_times.append(t)
        self.sum_ctx += self.size
        done = self.finish_at.pop(step, None)
        if done is None:
            return None
        out = []
        for r in done:
            # NOTE: lazy deletion: a preempted request left a stale entry behind.
            if r.batch is not self or r.finish_step != step:
                continue
            del self.running[r.rid]
            r.ctx += step - r.join_step
            self.sum_ctx -= r.ctx
            self.size -= 1
            r.remaining = 0
            r.batch = None
            r.segments.append((self.step_times, r.join_step, step))
            r.last_token = t
            out.append(r)
        return out

    def evict_last(self) -> SimRequest:
        """Preempt the most recently joined request (vLLM's policy); its KV is dropped."""
        _, r = self.running.popitem()
        progressed = self.step - r.join_step
        r.ctx += progressed
        r.remaining -= progressed
        self.sum_ctx -= r.ctx
        self.size -= 1
        if progressed:
            r.segments.append((self.step_times, r.join_step, self.step))
        r.batch = None
        return r
