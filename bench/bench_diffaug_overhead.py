"""DiffAug's training overhead, measured side by side in one run.

    ratio = time(train step with DiffAug)
            / (time(classifier step on both batches) + time(one no-grad denoiser forward on the DiffAug batch))

A train step with DiffAug (`diffaug_nb.augment.diffaug_loss` with a `DiffAug`) must cost no more than its two
unavoidable parts: the classifier's forward/backward/update on the original and the DiffAug batch, and one
forward of the denoiser. Everything else DiffAug does (drawing t and the noise, the forward diffusion, the
clamp, moving tensors) is overhead; the target is ratio <= 1.05.

The denoiser is the embedded UNet architecture (`diffaug_nb.scoremodel.make_unet`, random weights: timing
only), the classifier the small CNN, batch 128 of MNIST-5k digits. The three measurements are interleaved
(A, B, C, A, B, C, ...) so that a busy machine slows all three alike; medians of wall-clock and of process CPU
time are reported (CPU time is the steadier measure on a shared machine).

Usage:  python bench/bench_diffaug_overhead.py [--reps 15] [--batch 128] [--threads N]
"""
from __future__ import annotations
import argparse, statistics
import torch
from diffaug_nb.data import load_mnist5k
from diffaug_nb.diffusion import Denoiser, vp_scheduler, to_model
from diffaug_nb.scoremodel import make_unet
from diffaug_nb.augment import DiffAug, diffaug_loss
from diffaug_nb.train import make_classifier
from _interleave import rounds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=15, help='timed repetitions of each measurement')
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
    ap.add_argument('--target', type=float, default=1.05)
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    den = Denoiser(make_unet(), vp_scheduler()).eval()
    clf = make_classifier('cnn').train()
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-3)
    da = DiffAug(den)
    x, y = load_mnist5k('train').tensors
    xa, ya, xb, yb = x[:a.batch], y[:a.batch], x[a.batch:2*a.batch], y[a.batch:2*a.batch]
    xd = da(xb)  # a DiffAug batch for the classifier-only step
    t_fixed = da.sample_t(a.batch)
    g = torch.Generator().manual_seed(0)

    def step_diffaug():  # A: the real training step with DiffAug
        loss = diffaug_loss(clf, xa, ya, xb, yb, diffaug=da, generator=g)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    def step_classifier():  # B: the classifier's step on both batches (DiffAug batch given)
        loss = diffaug_loss(clf, xa, ya, xd, yb)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    xt_model = to_model(xd)
    def denoiser_forward():  # C: one no-grad denoiser forward on the DiffAug batch
        with torch.no_grad(): den.unet(xt_model, t_fixed).sample

    fns = dict(A=step_diffaug, B=step_classifier, C=denoiser_forward)
    r = rounds(fns, a.reps, a.warmup)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {a.batch}, reps {a.reps} (after {a.warmup} warm-up)")
    print(f"UNet params {sum(p.numel() for p in den.unet.parameters()):,}, CNN params {sum(p.numel() for p in clf.parameters()):,}")
    labels = dict(A='train step with DiffAug', B='classifier step on both batches', C='no-grad denoiser forward')
    ratios = {}
    for clock, d in [('wall', r.wall), ('cpu', r.cpu)]:
        med = r.median(clock)
        for k in fns: print(f"{clock:4s} {k} {labels[k]:32s} median {med[k]*1e3:8.1f} ms  mean {statistics.fmean(d[k])*1e3:8.1f} ms")
        ratios[clock] = med['A'] / (med['B'] + med['C'])
    for clock, r in ratios.items():
        print(f"ratio A/(B+C) ({clock} time, medians) = {r:.3f}; target <= {a.target}: {'PASS' if r <= a.target else 'FAIL'}")
    return ratios


if __name__ == '__main__':
    main()
