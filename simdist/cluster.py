"""A simulated deployment: M prefill x N decode instances (or colocated ones) on nodes, with
least-loaded routing and KV transfer over links with contention. `simulate()` runs a workload.

Links: same GPU (HBM copy), NVLink inside a node (per instance pair), network across nodes (per
node pair). A link sends one transfer at a time, FIFO (store-and-forward): a migration waits for
the ones ahead of it, which is how contention shows up. Bandwidth scales with the number of GPU
pairs moving their shards in parallel, min(src GPUs, dst GPUs).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from distllm.request import LifecycleEvent
from simdist.colocated import ColocatedInstance
from simdist.core import EventKind, Simulator
from simdist.host import HostModel, HostSpec
from simdist.instances import DecodeInstance, PrefillInstance
from simdist.profile import LatencyProfile
from simdist.results import SimResult
from simdist.sim_request import SimRequest
from simdist.workload import Workload

ROLES = ("prefill", "decode", "colocated")
_DE = LifecycleEvent.DECODE_END


@dataclass(frozen=True)
class InstanceSpec:
    """One instance: role, parallelism, node, and optionally its GPU ids inside the node
    (default: packed after the previous instances on the node)."""

    role: str
    tp: int = 1
    pp: int = 1
    node: int = 0
    gpus: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"instance role must be one of {ROLES}, got {self.role!r}")
        if self.tp < 1 or self.pp < 1 or self.node < 0:
            raise ValueError("instance tp and pp must be >= 1 and node >= 0")
        if self.gpus is not None and len(self.gpus) != self.tp * self.pp:
            raise ValueError(f"instance gpus must list tp*pp = {self.tp * self.pp} ids")


@dataclass(frozen=True)
class SchedulerSpec:
    """Scheduling knobs shared by every instance of a run."""

    max_prefill_tokens: int = 4096  # prefill batch token budget
    max_batch_size: int = 256  # running requests per decode / colocated instance
    chunk_tokens: int | None = None  # colocated: chunked-prefill token budget per iteration
    kv_capacity_scale: float = 1.0  # shrink KV capacity (tests of preemption/back-pressure)
    # colocated routing: least KV tokens ("tokens") or, as distllm's engine routes, fewest
    # unfinished requests ("requests")
    colocated_routing: str = "tokens"
    # distllm's async scheduling (pp = 1): the step after the running one is already composed,
    # so a migration landing mid-step on a decode instance, and a request arriving or ending its
    # prefill mid-step on a (prefill-priority) colocated one, waits for the step after that;
    # False: each joins the next step
    async_lag: bool = False

    def __post_init__(self) -> None:
        if self.max_prefill_tokens < 1 or self.max_batch_size < 1:
            raise ValueError("max_prefill_tokens and max_batch_size must be >= 1")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise ValueError("chunk_tokens must be >= 1")
        if not 0 < self.kv_capacity_scale <= 1:
            raise ValueError("kv_capacity_scale must be in (0, 1]")
        if self.colocated_routing not in ("tokens", "requests"):
            raise ValueError("colocated_routing must be 'tokens' or 'requests', got "
                             f"{self.colocated_routing!r}")


@dataclass(frozen=True)
class ClusterSpec:
    model: str
    instances: tuple[InstanceSpec, ...]
    sched: SchedulerSpec = field(default_factory=SchedulerSpec)

    def __post_init__(self) -> None:
        roles = {i.role for i in self.instances}
        if not roles or ("colocated" in roles and len(roles) > 1):
            raise ValueError("cluster: colocated instances cannot mix with prefill/decode ones")

    @property
    def num_gpus(self) -> int:
        return sum(i.tp * i.pp for i in self.instances)


class Link:
    """One FIFO link: a transfer takes `latency_s` (the profile's `overhead.transfer_ms`, the
    fixed cost of a migration: RPCs, gather/scatter) plus its bytes at the link's bandwidth."""

    __slots__ = ("free_at", "latency_s", "sec_per_byte")

    def __init__(self, gb_s: float, latency_s: float = 0.0) -> None:
        self.free_at = 0.0
        self.sec_per_byte = 1.0 / (gb_s * 1e9)
        self.latency_s = latency_s

    def send(self, now: float, nbytes: int, stretch: float = 1.0) -> float:
        """Queue a transfer of `nbytes` now; its end time. `stretch`: host contention on the
        transfer (simdist.host.HostModel.transfer_stretch; 1.0 leaves it exact)."""
        start = now if now > self.free_at else self.free_at
        if stretch == 1.0:  # NOTE: the same float operations as without the term
            self.free_at = end = start + self.latency_s + nbytes * self.sec_per_byte
        else:
            self.free_at = end = start + (self.latency_s + nbytes * self.sec_per_byte) * stretch
        return end


class Cluster:
    """Builds the instances of a ClusterSpec and routes requests between them."""

    def __init__(self, spec: ClusterSpec, profile: LatencyProfile, sim: Simulator) -> None:
        self.spec, self.profile, self.sim = spec, profile, sim
        self.prefills: list[PrefillInstance] = []
        self.decodes: list[DecodeInstance] = []
        self.colocated: list[ColocatedInstance] = []
        # (prefill index, decode index) or ("net", src node, dst node) -> link
        self.links: dict[tuple, Link] = {}
        self.kv_bytes = profile.kv_bytes_per_token(spec.model)
        self.transfer_s = profile.overhead.get("transfer_ms", 0.0) * 1e-3
        self.num_finished = 0
        self.num_steps = 0  # steps (prefill batches, decode / colocated iterations) run
        host = HostSpec.from_dict(profile.host)
        self.host = None if host is None else HostModel(host)  # None: no CPU contention
        # the engine receives (and logs) each request this long after it was sent
        self.frontend_latency_s = 0.0 if host is None else host.frontend_latency_ms * 1e-3
        used: dict[int, int] = {}  # node -> GPUs handed out
        for i, ispec in enumerate(spec.instances):
            gpus = ispec.gpus
            if gpus is None:
                start = used.get(ispec.node, 0)
                gpus = tuple(range(start, start + ispec.tp * ispec.pp))
            used[ispec.node] = max(used.get(ispec.node, 0), max(gpus) + 1)
            self._build(i, ispec, gpus)
        self.entry = self.prefills or self.colocated or self.decodes
        by_requests = self.colocated and spec.sched.colocated_routing == "requests"
        self.entry_load = _num_unfinished if by_requests else _load
        self.decode_only = not self.prefills and not self.colocated

    def _build(self, i: int, s: InstanceSpec, gpus: tuple[int, ...]) -> None:
        cost = self.profile.stage_cost(self.spec.model, s.tp, s.pp)
        sched = self.spec.sched
        cap = int(self.profile.kv_capacity(self.spec.model, s.tp, s.pp) * sched.kv_capacity_scale)
        name = f"{s.role}{i}:tp{s.tp}pp{s.pp}@n{s.node}"
        if s.role == "prefill":
            inst = PrefillInstance(name, len(self.prefills), self.sim, cost, cap,
                                   sched.max_prefill_tokens, self, s.node, gpus)
            self.prefills.append(inst)
        elif s.role == "decode":
            inst = DecodeInstance(name, len(self.decodes), self.sim, cost, cap,
                                  sched.max_batch_size, self, s.node, gpus, sched.async_lag)
            self.decodes.append(inst)
        else:
            inst = ColocatedInstance(name, len(self.colocated), self.sim, cost, cap,
                                     sched.max_prefill_tokens, sched.max_batch_size,
                                     sched.chunk_tokens, self, s.node, gpus, sched.async_lag)
            self.colocated.append(inst)

    # -- host CPU (simdist.host; a no-op without the profile's host section) -----------------
    def step_time(self, inst: object, dt: float, is_prefill: bool | None = None) -> float:
        """Duration of a step of `inst` starting now: `dt`, stretched by host contention
        (`is_prefill`: the step has prefill tokens; None: inst is a prefill instance)."""
        host = self.host
        if host is None:
            return dt
        if is_prefill is None:
            is_prefill = isinstance(inst, PrefillInstance)
        migrating = isinstance(inst, DecodeInstance) and inst.migrating > 0
        return host.begin_step(self.sim.now, dt, len(inst.gpus) // inst.cost.pp, is_prefill,
                               migrating)

    def step_done(self, inst: object, num_tokens: int) -> None:
        """A step of `inst` ended and streamed `num_tokens` output tokens."""
        self.num_steps += 1
        host = self.host
        if host is not None:
            host.end_step(len(inst.gpus) // inst.cost.pp)
            host.on_step(self.sim.now, num_tokens)

    # -- routing ---------------------------------------------------------------------------
    def on_arrival(self, r: SimRequest) -> None:
        if self.host is not None:
            self.host.on_request(self.sim.now)
        entry = self.entry
        if len(entry) == 1:
            inst = entry[0]
        elif self.prefills:
            inst = min(entry, key=_queued)  # ties: lowest index (min is stable)
        else:
            inst = min(entry, key=self.entry_load)
        if self.decode_only:
            r.first_token = self.sim.now  # prefilled elsewhere at arrival
            if r.remaining == 0:  # its only token came from that prefill
                r.last_token = r.first_token
                self.finish(r)
                return
        inst.enqueue(r)

    def on_prefilled(self, r: SimRequest, src: PrefillInstance) -> None:
        if r.remaining == 0 or not self.decodes:
            src.release(r)
            r.last_token = r.first_token
            self.finish(r)
            return
        r.prefill_inst = src
        decodes = self.decodes
        dst = decodes[0] if len(decodes) == 1 else min(decodes, key=_load)
        dst.enqueue(r)

    def transfer(self, src: PrefillInstance, dst: DecodeInstance, r: SimRequest) -> float:
        """Start r's KV migration now; returns its end time."""
        key = (src.index, dst.index)
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = self._make_link(src, dst)
        host = self.host
        stretch = 1.0 if host is None else host.transfer_stretch(dst.busy)
        return link.send(self.sim.now, self.kv_bytes * r.ctx, stretch)

    def _make_link(self, src: PrefillInstance, dst: DecodeInstance) -> Link:
        pairs = min(len(src.gpus), len(dst.gpus))
        if src.node != dst.node:
            # NOTE: every instance pair across the same two nodes shares one network link.
            shared = self.links.get(("net", src.node, dst.node))
            if shared is None:
                bw = self.profile.bandwidth_gb_s("network") * pairs
                shared = self.links[("net", src.node, dst.node)] = Link(bw, self.transfer_s)
            return shared
        if set(src.gpus) & set(dst.gpus):
            hbm = 2000.0  # same GPU: a device-local copy, GB/s
            return Link(hbm * pairs)
        return Link(self.profile.bandwidth_gb_s("nvlink") * pairs, self.transfer_s)

    def finish(self, r: SimRequest) -> None:
        r.log.append((_DE, self.sim.now))
        self.num_finished += 1

    def fail(self, r: SimRequest, why: str) -> None:
        r.error = why
        self.num_finished += 1


def _queued(inst: PrefillInstance) -> int:
    """Prefill load: prompt tokens waiting plus KV held (running batch and unmigrated)."""
    return inst.queued_tokens + inst.kv_used


def _load(inst: DecodeInstance | ColocatedInstance) -> int:
    return inst.load


def _num_unfinished(inst: ColocatedInstance) -> int:
    return inst.num_unfinished


def simulate(spec: ClusterSpec, profile: LatencyProfile, workload: Workload,
             rate: float | None, trace: list | None = None,
             num_requests: int | None = None) -> SimResult:
    """Run the first `num_requests` (default all) of `workload` at `rate` req/s (None for
    trace replay) through the cluster."""
    sim = Simulator(trace)
    cluster = Cluster(spec, profile, sim)
    arrivals = workload.arrivals(rate)
    n = len(arrivals) if num_requests is None else min(num_requests, len(arrivals))
    reqs = [SimRequest(i, arrivals[i], workload.prompt_lens[i], workload.output_lens[i])
            for i in range(n)]
    lat = cluster.frontend_latency_s
    if lat:
        for r in reqs:
            r.log[0] = (r.log[0][0], r.arrival + lat)
    it = iter(reqs)

    def arrive(r: SimRequest) -> None:
        nxt = next(it, None)
        if nxt is not None:
            sim.schedule(nxt.arrival + lat, EventKind.ARRIVAL, arrive, nxt)
        cluster.on_arrival(r)

    first = next(it)
    sim.schedule(first.arrival + lat, EventKind.ARRIVAL, arrive, first)
    end = sim.run()
    return SimResult(reqs, end, sim.num_events, spec.num_gpus, cluster)
