"""Host CPU contention: the serving host's cores shared by step workers and the frontend.

On a small CPU host the instances' worker threads, the API server (HTTP, token streaming,
detokenization, the engine driver) and the load generator share the same cores. Step-level
profiling runs without that frontend, so under load the real steps stretch. An optional profile
section `host: {cores, frontend_cpu_ms_per_step, frontend_cpu_ms_per_token,
frontend_cpu_ms_per_request, background_cores, frontend_latency_ms, window_ms, contention_prefill,
contention_decode, contention_transfer, contention_migrate}` (frontend figures measured by
`distllm.profiler.host` around a benchmark round, contention coefficients by
`distllm.profiler.contention` / `distllm profile`) turns this on:

    demand  = worker threads in a step (this one included) + frontend cores + background cores
    frontend cores = CPU ms of the steps, tokens and requests the frontend handled in the last
                     `window_ms` of simulated time / window_ms
    others  = worker threads of OTHER instances inside a step when this one starts
    step    = profiled step * max(1, demand / cores)           (fair share of the cores)
                            * (1 + contention_<kind> * others) (steps of the other phase)
              both fixed at step start; kind = prefill for a step with prefill tokens, else decode
    TTFT   += frontend_latency_ms (HTTP, tokenization, first-token streaming; the engine
              receives each request that much after it was sent)

The frontend's CPU follows the engine's steps (the driver schedules, dispatches and collects
every step and streams its tokens): measured on this host its CPU per step is nearly the same at
3 and 9 req/s while its CPU per token halves.

The contention term is what the fair share misses: two busy workers on two cores never exceed
the cores, yet in served rounds on the 2-core demo host a prefill runs ~25-30 % longer while the
decode instance steps than while it is idle, and a decode step ~20 % longer while a prefill runs;
the fair share with the frontend's load gives ~80 % of that. Two bare workers on a quiet host
(evaluation/bench_contention.py) slow a prefill by 0-56 % and a decode step by 0-33 %, varying
from run to run. Coefficients come from `distllm profile` (that two-worker measurement,
distllm.profiler.contention) or are fitted to served rounds (simdist.calibrate.fit_contention:
0.30 prefill, 0.05 decode on top of the fair share, disaggregated, in the validation run behind
the shipped cpu-demo profile; 0.15 / 0.05 and 0.10 / 0.00 in earlier runs).
Absent coefficients are 0: the same simulation, bit for bit, as before they existed.

KV transfers contend too (`contention_transfer`): a migration's receive runs on a thread of the
decode worker, which shares the worker's core with its steps. In the validation runs on the
demo host a migration took a median 5.9-6.8 ms when the decode instance was idle and 10.1-11.2
ms when it was stepping (its duration does not follow the prompt length there: fixed costs
dominate a few hundred KB), so a transfer that starts while its decode instance is in a step
lasts (1 + contention_transfer) times longer. simdist.calibrate.transfer_contention measures it
from a run's lifecycle timestamps (the ratio of those medians, minus one): 0.71-0.78 in three
runs. Simulating it fits the transfer term's spread (median and tail of the migration times at
3 req/s: 6.3 / 10.7 ms against the real 6.4 / 12.6, where a fixed time gave 9.1 / 9.3), but on
those runs it did not lower the held-out errors on net (the calibration's decode fit takes up
what it changes), so evaluation/validate_simulator.py reports it and simulates it only with
--transfer-contention.

The same sharing slows the decode steps (`contention_migrate`): a decode step that starts while
KV migrations to its instance are in flight lasts (1 + contention_migrate) times longer. At 12
req/s on the demo host the decode worker, with a batch nearly all the round, was busy only 0.72
of a core while the host had half a core spare, and the simulated decode term per token fell
28 % short of the real one there (colocated instances, without migrations, matched).
evaluation/validate_simulator.py (--migrate-contention, default) sets it to the measured
transfer contrast (the same sharing seen from the step's side). Re-calibrated offline on eight
saved runs, the disaggregated rows' mean |p90 TPOT error| fell from 9.5 to 8.7 % (as many rows
met every target, 17 of 32); a live run with it met 6 of 8 rows, disaggregated p90 TPOT errors
-2 / +2 / -12 / -20 % at 3 / 6 / 9 / 12 req/s against -9 / -7 / -20 / -36 % in the run before.

Host jitter (`jitter_sd`, `jitter_ms`, `jitter_seed`; absent sd = 0: off, bit for bit as before):
this shared host's speed wanders. Replaying one trace six times against the demo server, the
same request's TPOT varies with a log standard deviation of 0.20-0.37 from round to round, and
neighbouring requests move together (correlation +0.4-0.7 in disaggregated rounds): the host is
slow or fast for a while, for every process at once. A simulation without it predicts the
distribution the host would give if it kept one speed, whose tail is too thin: p90 TPOT
10-26 % low at every rate in a validation run whose real medians were known to 7 % (the run
behind the numbers above). Every step is stretched by a factor exp(x(t)) (median 1), x an
Ornstein-Uhlenbeck process with stationary standard deviation `jitter_sd` and correlation time
`jitter_ms`, sampled at step starts and shared by every instance of the host, drawn from a
generator seeded by `jitter_seed`: a run stays a function of its inputs, and replays with
different seeds give the spread of real rounds (evaluation/validate_simulator.py --fit-jitter
fits it to two replays of a calibration trace, simulates as many seeds as it runs real rounds
and takes the same median over them). Fitted that way it came out larger than the rows' own
replays showed (0.30 / 0.40 against 0.18-0.30; the replays also diverge through their
scheduling), and on net it did not lower the errors. Measured directly instead
(distllm.profiler.jitter: a fixed unit of work timed back to back for 20 s before the servers
start, the OU autocovariance fitted to its binned log durations) the idle host gives ~0.06-0.07
and ~300-500 ms; re-calibrating three saved validation runs offline with a jitter of that size
(0.05-0.1, 300-500 ms) met every target in 11-16 of their 24 rows against 10 without, so
evaluation/validate_simulator.py measures and uses it by default (--measure-jitter).

Absent section: no HostModel is built and every step is exactly the profiled one.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class HostSpec:
    cores: float
    frontend_cpu_ms_per_step: float = 0.0  # per engine step of any instance (the driver)
    frontend_cpu_ms_per_token: float = 0.0  # per streamed output token
    frontend_cpu_ms_per_request: float = 0.0  # per request (HTTP, tokenization of the prompt)
    background_cores: float = 0.0  # other load on the host (constant)
    # HTTP + tokenization before the engine sees a request, plus streaming of its first token:
    # added to TTFT (the engine receives each request this much after it was sent)
    frontend_latency_ms: float = 0.0
    window_ms: float = 500.0  # frontend load: CPU spent over this much recent simulated time
    # per other busy worker thread at step start: a prefill / decode step lasts (1 + c) x longer
    contention_prefill: float = 0.0
    contention_decode: float = 0.0
    # a KV transfer that starts while its decode instance is in a step lasts (1 + c) x longer
    contention_transfer: float = 0.0
    # a decode step that starts while KV migrations to its instance are in flight lasts
    # (1 + c) x longer (the receive shares the worker's core and interpreter)
    contention_migrate: float = 0.0
    jitter_sd: float = 0.0  # log standard deviation of the host's speed (0: off)
    jitter_ms: float = 1000.0  # its correlation time
    jitter_seed: float = 0.0  # seeds the speed process (a float: the section is all numbers)

    def __post_init__(self) -> None:
        if self.cores <= 0:
            raise ValueError(f"host cores must be > 0, got {self.cores}")
        costs = (self.frontend_cpu_ms_per_step, self.frontend_cpu_ms_per_token,
                 self.frontend_cpu_ms_per_request, self.background_cores,
                 self.frontend_latency_ms, self.contention_prefill, self.contention_decode,
                 self.contention_transfer, self.contention_migrate, self.jitter_sd)
        if min(costs) < 0:
            raise ValueError("host frontend CPU costs, background cores, contention "
                             "coefficients and jitter_sd must be >= 0")
        if self.window_ms <= 0 or self.jitter_ms <= 0:
            raise ValueError("host window_ms and jitter_ms must be > 0")

    @classmethod
    def from_dict(cls, d: dict | None) -> HostSpec | None:
        """The profile's `host` section (extra keys such as `measured` are ignored)."""
        if not d:
            return None
        return cls(**{f.name: float(d[f.name]) for f in fields(cls) if f.name in d})


class HostModel:
    """Run-time state of one simulated host: worker threads in a step and the frontend's
    recent CPU work. Deterministic: a function of the event order only."""

    __slots__ = ("cores", "per_step_ms", "per_token_ms", "per_request_ms", "background",
                 "window_s", "busy", "recent", "recent_ms", "c_prefill", "c_decode",
                 "c_transfer", "c_migrate", "jitter")

    def __init__(self, spec: HostSpec) -> None:
        self.cores = spec.cores
        self.per_step_ms = spec.frontend_cpu_ms_per_step
        self.background = spec.background_cores
        self.per_token_ms = spec.frontend_cpu_ms_per_token
        self.per_request_ms = spec.frontend_cpu_ms_per_request
        self.window_s = spec.window_ms * 1e-3
        self.c_prefill, self.c_decode = spec.contention_prefill, spec.contention_decode
        self.c_transfer = spec.contention_transfer
        self.c_migrate = spec.contention_migrate
        self.busy = 0  # worker threads inside a step
        self.recent: deque[tuple[float, float]] = deque()  # (time s, frontend CPU ms)
        self.recent_ms = 0.0
        self.jitter = (HostJitter(spec.jitter_sd, spec.jitter_ms * 1e-3, int(spec.jitter_seed))
                       if spec.jitter_sd > 0 else None)

    def _add(self, now: float, cpu_ms: float) -> None:
        if cpu_ms > 0:
            self.recent.append((now, cpu_ms))
            self.recent_ms += cpu_ms

    def on_step(self, now: float, num_tokens: int) -> None:
        """A step ended: the frontend collects it and streams its num_tokens output tokens."""
        self._add(now, self.per_step_ms + num_tokens * self.per_token_ms)

    def on_request(self, now: float) -> None:
        self._add(now, self.per_request_ms)

    def frontend_cores(self, now: float) -> float:
        """Cores the frontend keeps busy: its CPU over the last window."""
        recent, horizon = self.recent, now - self.window_s
        while recent and recent[0][0] < horizon:
            self.recent_ms -= recent.popleft()[1]
        if not recent:
            self.recent_ms = 0.0  # no float drift once the window empties
        return self.recent_ms * 1e-3 / self.window_s

    def begin_step(self, now: float, dt: float, threads: int = 1,
                   is_prefill: bool = False, migrating: bool = False) -> float:
        """A step of `threads` worker threads starts; returns its stretched duration: fair
        share of the cores, then the contention of the other instances' busy threads (and,
        `migrating`: of KV migrations landing on its decode instance)."""
        others = self.busy
        self.busy += threads
        demand = self.busy + self.background + self.frontend_cores(now)
        if demand > self.cores:
            dt = dt * demand / self.cores
        c = self.c_prefill if is_prefill else self.c_decode
        if c > 0 and others > 0:  # c = 0: dt untouched (bit-identical to no term)
            dt = dt * (1.0 + c * others)
        if migrating and self.c_migrate > 0:
            dt = dt * (1.0 + self.c_migrate)
        if self.jitter is not None:
            dt = dt * self.jitter.factor(now)
        return dt

    def end_step(self, threads: int = 1) -> None:
        self.busy -= threads

    def transfer_stretch(self, dst_busy: bool) -> float:
        """How much longer a KV transfer starting now takes: 1 + contention_transfer when its
        decode instance is in a step (the receive shares that worker's core), else 1."""
        return 1.0 + self.c_transfer if dst_busy else 1.0


class HostJitter:
    """The host's speed factor exp(x(t)): x an Ornstein-Uhlenbeck process (stationary standard
    deviation `sd`, correlation time `tau_s`), sampled exactly at the times asked, which must
    not decrease (a simulation's clock)."""

    __slots__ = ("sd", "tau_s", "rng", "normals", "t", "x")

    def __init__(self, sd: float, tau_s: float, seed: int) -> None:
        import numpy as np

        self.sd, self.tau_s = sd, tau_s
        self.rng = np.random.default_rng(seed)
        self.normals: list[float] = []
        self.t: float | None = None
        self.x = 0.0

    def _normal(self) -> float:
        if not self.normals:
            self.normals = self.rng.standard_normal(1024).tolist()[::-1]
        return self.normals.pop()

    def factor(self, now: float) -> float:
        if self.t is None:  # the stationary distribution
            self.x = self.sd * self._normal()
        elif now > self.t:
            a = math.exp(-(now - self.t) / self.tau_s)
            self.x = a * self.x + self.sd * math.sqrt(1.0 - a * a) * self._normal()
        self.t = now
        return math.exp(self.x)
