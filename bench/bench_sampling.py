"""DDIM-50 with `diffaug_nb.sampling.sample_ddim` against diffusers' `DDIMPipeline`, side by side in one run.

    ratio = throughput(sample_ddim) / throughput(DDIMPipeline)      (same UNet, batch, 50 steps, eta = 0)

diffusers' pipeline is the reference implementation of the same loop: one UNet forward per step plus the
scheduler's arithmetic. Ours does the same work and must keep >= 0.95x its throughput (samples per second).
The UNet is the embedded architecture (`scoremodel.make_unet`, random weights: timing only). The two are
interleaved (A, B, A, B, ...) so a busy machine slows both alike; medians of wall-clock and process CPU time.

Usage:  python bench/bench_sampling.py [--reps 5] [--batch 64] [--steps 50] [--threads N]
"""
from __future__ import annotations
import argparse
import torch
from diffusers import DDIMPipeline, DDIMScheduler
from _interleave import interleaved
from diffaug_nb.diffusion import Denoiser, vp_scheduler
from diffaug_nb.scoremodel import make_unet
from diffaug_nb.sampling import sample_ddim, ddim_timesteps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=5)
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--steps', type=int, default=50)
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--target', type=float, default=0.95)
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    den = Denoiser(make_unet(), vp_scheduler()).eval()
    sch = DDIMScheduler.from_config(den.scheduler.config, clip_sample=True, set_alpha_to_one=True)
    pipe = DDIMPipeline(unet=den.unet, scheduler=sch); pipe.set_progress_bar_config(disable=True)
    ts = ddim_timesteps(den.T, a.steps)
    xT = torch.randn(a.batch, 1, 28, 28)

    def ours(): sample_ddim(den, xT, ts, eta=0.0)
    def theirs(): pipe(batch_size=a.batch, num_inference_steps=a.steps, eta=0.0, output_type='np', generator=torch.Generator().manual_seed(0))
    fns = dict(A=ours, B=theirs)
    med = interleaved(fns, a.reps, a.warmup)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {a.batch}, DDIM-{a.steps}, reps {a.reps} (after {a.warmup} warm-up)")
    labels = dict(A='diffaug_nb sample_ddim', B='diffusers DDIMPipeline')
    ratios = {}
    for clock, m in med.items():
        for k in fns: print(f"{clock:4s} {k} {labels[k]:24s} median {m[k]:7.2f} s  = {a.batch/m[k]:7.1f} samples/s")
        ratios[clock] = m['B'] / m['A']   # throughput ratio ours/theirs
    for clock, r in ratios.items():
        print(f"throughput ratio A/B ({clock} time, medians) = {r:.3f}; target >= {a.target}: {'PASS' if r >= a.target else 'FAIL'}")
    return ratios


if __name__ == '__main__':
    main()
