"""Placement planner: DistServe's two algorithms plus the colocated baseline.

- high node affinity: goodput of every prefill config (TTFT only) and every decode config (TPOT
  only) alone; the best few of each are paired, replicated M:N to balance the two rates on the
  cluster, and the pairs are ranked by full-system goodput (both SLOs, KV transfer modelled).
- low node affinity: a unit is pp_cross nodes each holding one pipeline stage of m prefill and
  n decode instances (KV moves over NVLink); units are replicated across the nodes.
- colocated: one instance kind per config (vLLM-style, optional chunked prefill), replicated.
Ranking is by per-GPU goodput (DESIGN.md), then by cluster goodput.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from simdist.cluster import ClusterSpec, InstanceSpec, SchedulerSpec
from simdist.goodput import GoodputResult, GoodputTask
from simdist.placement_pack import pack_nodes
from simdist.profile import LatencyProfile
from simdist.runner import TaskRunner
from simdist.workload import Workload

PP_CHOICES = (1, 2, 4, 8)
TOP_K = 3  # best configs of each phase paired; the TOP_K + 1 best groups get a full search


@dataclass(frozen=True)
class PlanRequest:
    model: str
    num_nodes: int
    gpus_per_node: int
    ttft_slo_ms: float
    tpot_slo_ms: float
    attainment: float = 0.9
    affinity: str = "high"
    mode: str = "both"  # disaggregated | colocated | both
    sched: SchedulerSpec = SchedulerSpec()
    colocated_sched: SchedulerSpec | None = None  # e.g. chunked prefill for the baseline
    min_requests: int = 300  # per simulation; decode runs use more (see steady_requests)

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            raise ValueError("--num-nodes and --gpus-per-node must be >= 1")
        if self.affinity not in ("high", "low"):
            raise ValueError(f"--affinity must be high or low, got {self.affinity!r}")
        if self.mode not in ("disaggregated", "colocated", "both"):
            raise ValueError(f"--mode must be disaggregated, colocated or both, got {self.mode!r}")
        if not 0 < self.attainment <= 1:
            raise ValueError(f"--attainment must be in (0, 1], got {self.attainment}")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node


@dataclass
class Candidate:
    """One ranked plan. `result` is the goodput search of one replica group (`replicas` of
    them are placed); ranked by per-GPU goodput, then cluster_rps (per-GPU x placed GPUs)."""

    kind: str  # disaggregated | colocated
    label: str
    result: GoodputResult
    replicas: int = 1
    pp_cross: int = 1

    @property
    def num_gpus(self) -> int:
        return self.result.num_gpus * self.replicas

    @property
    def cluster_rps(self) -> float:
        return self.result.per_gpu_rps * self.num_gpus


def parallel_configs(profile: LatencyProfile, model: str, max_gpus: int, gpus_per_node: int,
                     min_kv_tokens: int) -> list[tuple[int, int]]:
    """(tp, pp) with a profile entry, tp inside a node, enough KV capacity for one request."""
    out = []
    for tp, pp in itertools.product(profile.tps(model), PP_CHOICES):
        if tp <= gpus_per_node and tp * pp <= max_gpus:
            if profile.kv_capacity(model, tp, pp) >= min_kv_tokens:
                out.append((tp, pp))
    return out


def _guess(profile: LatencyProfile, model: str, tp: int, pp: int, wl: Workload,
           role: str = "prefill", sched: SchedulerSpec | None = None) -> float:
    """Rough per-GPU capacity (req/s) of one instance, the bisection's starting point:
    prefill at full token-budget batches, decode at the batch its KV capacity allows."""
    cost = profile.stage_cost(model, tp, pp)
    sched = sched or SchedulerSpec()
    mean_l = sum(wl.prompt_lens) / len(wl)
    if role == "prefill":
        per_batch = max(1.0, sched.max_prefill_tokens // max(mean_l, 1))
        tokens = int(per_batch * mean_l)
        t = cost.prefill_stage(tokens, int(per_batch * mean_l * mean_l))
        return max(0.05, 0.8 * per_batch / (t * tp * pp))
    mean_o = sum(wl.output_lens) / len(wl)
    ctx = mean_l + mean_o / 2
    batch = max(1, int(min(sched.max_batch_size, profile.kv_capacity(model, tp, pp) / ctx)))
    t = cost.decode(batch, int(batch * ctx))
    return max(0.05, 0.8 * batch / (t * mean_o * tp * pp))


def steady_requests(spec: ClusterSpec, profile: LatencyProfile, wl: Workload,
                    min_requests: int) -> int:
    """Requests per run: enough to fill every decode batch ~5 times over, so overload shows
    as queueing rather than hiding in a short burst (TPOT spreads a wait over many tokens)."""
    mean_ctx = (sum(wl.prompt_lens) + sum(wl.output_lens) / 2) / len(wl)
    conc = 0
    for i in spec.instances:
        if i.role != "prefill":
            cap = profile.kv_capacity(spec.model, i.tp, i.pp) * spec.sched.kv_capacity_scale
            conc += min(spec.sched.max_batch_size, cap / mean_ctx)
    return int(min(len(wl), max(min_requests, 5 * conc)))


def _task(label: str, spec: ClusterSpec, req: PlanRequest, ttft: float | None,
          tpot: float | None, guess: float, profile: LatencyProfile, wl: Workload) -> GoodputTask:
    n = steady_requests(spec, profile, wl, req.min_requests)
    return GoodputTask(label, spec, ttft, tpot, req.attainment, guess, num_requests=n)


def _one(role: str, model: str, tp: int, pp: int, sched: SchedulerSpec) -> ClusterSpec:
    return ClusterSpec(model, (InstanceSpec(role, tp, pp),), sched)


def _alone_tasks(req: PlanRequest, profile: LatencyProfile, wl: Workload,
                 cfgs: list[tuple[int, int]]) -> list[GoodputTask]:
    """Goodput searches of one prefill instance (TTFT SLO only), then one decode instance (TPOT SLO
    only), for every (tp, pp) in `cfgs`, in that order."""
    m = req.model
    tasks = [_task(f"prefill tp{tp} pp{pp}", _one("prefill", m, tp, pp, req.sched), req,
                   req.ttft_slo_ms, None, _guess(profile, m, tp, pp, wl), profile, wl)
             for tp, pp in cfgs]
    tasks += [_task(f"decode tp{tp} pp{pp}", _one("decode", m, tp, pp, req.sched), req, None,
                    req.tpot_slo_ms, _guess(profile, m, tp, pp, wl, "decode", req.sched),
                    profile, wl) for tp, pp in cfgs]
    return tasks


def search_high(req: PlanRequest, profile: LatencyProfile, wl: Workload,
                runner: TaskRunner) -> list[Candidate]:
    need = max(p + o for p, o in zip(wl.prompt_lens, wl.output_lens, strict=True))
    cfgs = parallel_configs(profile, req.model, req.num_gpus, req.gpus_per_node, need)
    alone = runner.run(_alone_tasks(req, profile, wl, cfgs), "high affinity: instances alone")
    room = req.num_gpus - 1  # every group needs at least one GPU for the other phase
    top_p = _top([r for r in alone if r.label.startswith("prefill") and r.num_gpus <= room])
    top_d = _top([r for r in alone if r.label.startswith("decode") and r.num_gpus <= room])
    groups = []
    for p, d in itertools.product(top_p, top_d):
        group = _group(req, p, d)
        if group is not None:
            groups.append((_group_rate(group[0], p, d) / group[0].num_gpus, group))
    groups.sort(key=lambda g: -g[0])
    full, reps = [], []
    for guess, (spec, n) in groups[:TOP_K + 1]:
        full.append(_task(_pair_label(spec), spec, req, req.ttft_slo_ms, req.tpot_slo_ms,
                          guess, profile, wl))
        reps.append(n)
    results = runner.run(full, "high affinity: M:N groups")
    return [Candidate("disaggregated", r.label, r, n) for r, n in zip(results, reps, strict=True)]


def _top(results: list[GoodputResult]) -> list[GoodputResult]:
    ok = sorted((r for r in results if r.per_gpu_rps > 0), key=lambda r: -r.per_gpu_rps)
    return ok[:TOP_K]


def _group(req: PlanRequest, p: GoodputResult,
           d: GoodputResult) -> tuple[ClusterSpec, int] | None:
    """M prefill x N decode with the best per-GPU rate min(M*Rp, N*Rd) / GPUs (the M:N ratio
    that balances the two phases), and how many such groups the cluster holds."""
    ps, ds = p.spec.instances[0], d.spec.instances[0]
    gp, gd = ps.tp * ps.pp, ds.tp * ds.pp
    rp, rd = p.per_gpu_rps * gp, d.per_gpu_rps * gd
    best, best_key = None, None
    for m in range(1, req.num_gpus // gp + 1):
        for n in range(1, (req.num_gpus - m * gp) // gd + 1):
            rate = min(m * rp, n * rd)
            key = (rate / (m * gp + n * gd), -(m * gp + n * gd))  # smallest group on ties
            if best_key is not None and key <= best_key:
                continue
            insts = pack_nodes([ps] * m + [ds] * n, req.num_nodes, req.gpus_per_node)
            if insts is not None:
                best, best_key = (m, n, insts), key
    if best is None:
        return None
    m, n, insts = best
    reps = 1
    while pack_nodes(([ps] * m + [ds] * n) * (reps + 1), req.num_nodes,
                     req.gpus_per_node) is not None:
        reps += 1
    return ClusterSpec(req.model, tuple(insts), req.sched), reps


def _group_rate(spec: ClusterSpec, p: GoodputResult, d: GoodputResult) -> float:
    """min(M * prefill instance rate, N * decode instance rate) from the searches alone."""
    roles = [i.role for i in spec.instances]
    return min(roles.count("prefill") * p.per_gpu_rps * p.num_gpus,
               roles.count("decode") * d.per_gpu_rps * d.num_gpus)


def _pair_label(spec: ClusterSpec) -> str:
    p = [i for i in spec.instances if i.role == "prefill"]
    d = [i for i in spec.instances if i.role == "decode"]
    return (f"{len(p)}x prefill tp{p[0].tp} pp{p[0].pp} + "
            f"{len(d)}x decode tp{d[0].tp} pp{d[0].pp}")


def search_low(req: PlanRequest, profile: LatencyProfile, wl: Workload,
               runner: TaskRunner) -> list[Candidate]:
    """Per pp_cross: instance goodputs alone (TP only inside a node), then the node segments
    (m prefill + n decode fitting a node) with the best estimated per-GPU rate get a
    full-system search."""
    need = max(p + o for p, o in zip(wl.prompt_lens, wl.output_lens, strict=True))
    tps = [tp for tp in profile.tps(req.model) if tp <= req.gpus_per_node]
    cfgs = [(tp, pp) for pp in range(1, req.num_nodes + 1) for tp in tps
            if profile.kv_capacity(req.model, tp, pp) >= need]
    alone = runner.run(_alone_tasks(req, profile, wl, cfgs), "low affinity: instances alone")
    # (tp, pp) -> rate of one instance
    rp = {c: r.per_gpu_rps * c[0] * c[1] for c, r in zip(cfgs, alone[:len(cfgs)], strict=True)}
    rd = {c: r.per_gpu_rps * c[0] * c[1] for c, r in zip(cfgs, alone[len(cfgs):], strict=True)}
    est = []
    g = req.gpus_per_node
    for (tp_p, pp), (tp_d, pp_d) in itertools.product(cfgs, cfgs):
        if pp_d != pp or rp[tp_p, pp] <= 0 or rd[tp_d, pp] <= 0:
            continue
        for m in range(1, (g - tp_d) // tp_p + 1):
            for n in range(1, (g - m * tp_p) // tp_d + 1):
                rate = min(m * rp[tp_p, pp], n * rd[tp_d, pp])
                est.append((rate / (pp * (m * tp_p + n * tp_d)), rate, tp_p, tp_d, m, n, pp))
    est.sort(reverse=True)
    full, units = [], []
    for guess, _, tp_p, tp_d, m, n, pp in est[:TOP_K + 1]:
        insts = [InstanceSpec("prefill", tp_p, pp)] * m + [InstanceSpec("decode", tp_d, pp)] * n
        spec = ClusterSpec(req.model, tuple(insts), req.sched)
        full.append(_task(f"{_pair_label(spec)} (pp_cross {pp})", spec, req, req.ttft_slo_ms,
                          req.tpot_slo_ms, guess, profile, wl))
        units.append((pp, req.num_nodes // pp))
    results = runner.run(full, "low affinity: node segments")
    return [Candidate("disaggregated", r.label, r, reps, pp)
            for r, (pp, reps) in zip(results, units, strict=True)]


def search_colocated(req: PlanRequest, profile: LatencyProfile, wl: Workload,
                     runner: TaskRunner, pp_max: int | None = None) -> list[Candidate]:
    sched = req.colocated_sched or req.sched
    need = max(p + o for p, o in zip(wl.prompt_lens, wl.output_lens, strict=True))
    cfgs = [(tp, pp) for tp, pp in parallel_configs(profile, req.model, req.num_gpus,
                                                     req.gpus_per_node, need)
            if pp_max is None or pp <= pp_max]
    tasks = [_task(f"colocated tp{tp} pp{pp}", _one("colocated", req.model, tp, pp, sched), req,
                   req.ttft_slo_ms, req.tpot_slo_ms, _colocated_guess(profile, req, tp, pp, wl),
                   profile, wl) for tp, pp in cfgs]
    results = runner.run(tasks, "colocated")
    out = []
    for r in results:
        inst = r.spec.instances[0]
        reps = len(pack_nodes([inst] * req.num_gpus, req.num_nodes, req.gpus_per_node,
                              partial=True) or [])
        out.append(Candidate("colocated", r.label, r, max(reps, 1)))
    return out


def _colocated_guess(profile: LatencyProfile, req: PlanRequest, tp: int, pp: int,
                     wl: Workload) -> float:
    """Both phases time-share the GPUs: 1 / (1/prefill capacity + 1/decode capacity)."""
    gp = _guess(profile, req.model, tp, pp, wl)
    gd = _guess(profile, req.model, tp, pp, wl, "decode", req.sched)
    return 1.0 / (1.0 / gp + 1.0 / gd)


def rank(cands: list[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: (-c.result.per_gpu_rps, -c.cluster_rps, c.label))
