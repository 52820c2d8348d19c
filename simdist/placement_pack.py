"""Packs instances onto nodes: an instance needs tp*pp GPUs; one that needs more than a node
takes whole nodes (pipeline stages across nodes), smaller ones go first-fit inside a node."""
from __future__ import annotations

from dataclasses import replace

from simdist.cluster import InstanceSpec


def pack_nodes(instances: list[InstanceSpec], num_nodes: int, gpus_per_node: int,
               partial: bool = False) -> list[InstanceSpec] | None:
    """Instances with their `node` set, or None when they do not all fit (with `partial`, the
    prefix that fits). Larger instances are placed first; order is kept in the result."""
    free = [gpus_per_node] * num_nodes
    placed: dict[int, InstanceSpec] = {}
    order = sorted(range(len(instances)), key=lambda i: -instances[i].tp * instances[i].pp)
    for i in order:
        inst = instances[i]
        need = inst.tp * inst.pp
        node = _fit(free, need, gpus_per_node)
        if node is None:
            if partial:
                continue
            return None
        placed[i] = replace(inst, node=node)
    return [placed[i] for i in sorted(placed)]


def _fit(free: list[int], need: int, gpus_per_node: int) -> int | None:
    if need <= gpus_per_node:
        for node, f in enumerate(free):
            if f >= need:
                free[node] -= need
                return node
        return None
    span = -(-need // gpus_per_node)
    for start in range(len(free) - span + 1):
        if all(free[k] == gpus_per_node for k in range(start, start + span)):
            for k in range(start, start + span):
                free[k] = 0
            return start
    return None
