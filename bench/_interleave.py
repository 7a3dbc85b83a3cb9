"""Shared timing for the benchmarks: run functions interleaved (A, B, A, B, ...) so a busy machine slows them alike.

    r = rounds({'A': f, 'B': g}, reps=5, warmup=1, sync=device_sync(dev), per=n_images)
    r.median('wall')['A'], r.median('cpu')['B'], r.paired('A', 'B'), r.wall['A'] (every round), r.last['A'] (f's result)
    interleaved(fns, reps, warmup) -> {'wall': {name: median s}, 'cpu': {name: median s}}   (the medians only)
"""
from __future__ import annotations
import statistics, time
from typing import Callable, NamedTuple


class Rounds(NamedTuple):
    "Per-round times of interleaved functions (seconds, divided by `per`), and what each returned in the last round."
    wall: dict  # name -> [wall-clock s per round]
    cpu: dict   # name -> [process CPU s per round]
    last: dict  # name -> the function's return value in the last timed round

    def median(self, clock:str='wall')->dict:
        "{name: median over rounds} of the 'wall' or 'cpu' clock."
        return {k: statistics.median(v) for k, v in getattr(self, clock).items()}

    def paired(self, a:str, b:str, clock:str='wall')->float:
        "Median over rounds of a/b: a and b ran back to back in each round, under the same load."
        d = getattr(self, clock)
        return statistics.median(x / y for x, y in zip(d[a], d[b]))


def device_sync(dev)->Callable|None:
    "`torch.cuda.synchronize` on a CUDA device (its work is asynchronous: time it to completion), None elsewhere."
    if getattr(dev, 'type', str(dev).split(':')[0]) != 'cuda': return None
    import torch
    return lambda: torch.cuda.synchronize(dev)


def rounds(fns:dict, # name -> a function of no arguments
           reps:int, # timed rounds
           warmup:int=1, # untimed rounds first
           sync:Callable|None=None, # called before and after each function (e.g. `device_sync(dev)`)
           per:float=1, # divide every time by this (e.g. the images per call: seconds per image)
          )->Rounds:
    "Call every function once per round, in order, for `warmup` + `reps` rounds; wall-clock and process CPU time of the timed ones."
    wall, cpu, last = {k: [] for k in fns}, {k: [] for k in fns}, {}
    sync = sync or (lambda: None)
    for i in range(warmup + reps):
        for k, f in fns.items():
            sync(); t0, c0 = time.perf_counter(), time.process_time()
            out = f(); sync()
            if i >= warmup:
                wall[k].append((time.perf_counter() - t0) / per); cpu[k].append((time.process_time() - c0) / per); last[k] = out
    return Rounds(wall, cpu, last)


def interleaved(fns:dict, reps:int, warmup:int=1, sync:Callable|None=None, per:float=1)->dict:
    "{'wall': {name: median s}, 'cpu': {name: median s}} over `reps` interleaved rounds after `warmup` untimed ones."
    r = rounds(fns, reps, warmup, sync, per)
    return {clock: r.median(clock) for clock in ('wall', 'cpu')}
