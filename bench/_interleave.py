"""Shared timing for the benchmarks: run functions interleaved (A, B, A, B, ...) so a busy machine slows them alike."""
from __future__ import annotations
import statistics, time


def interleaved(fns:dict, reps:int, warmup:int=1)->dict:
    "{'wall': {name: median s}, 'cpu': {name: median s}} over `reps` interleaved rounds after `warmup` untimed ones."
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    for i in range(warmup + reps):
        for k, f in fns.items():
            t0, c0 = time.perf_counter(), time.process_time(); f()
            if i >= warmup: wall[k].append(time.perf_counter() - t0); cpu[k].append(time.process_time() - c0)
    return {clock: {k: statistics.median(v) for k, v in d.items()} for clock, d in (('wall', wall), ('cpu', cpu))}
