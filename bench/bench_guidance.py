"""One classifier-guided DDIM step against its floor, and DA guidance against noisy guidance, side by side in one run.

    ratio(kind)   = time(one guided DDIM step with `ClassifierGuidance`) / time(its floor)      kind: noisy, DA
    DA over noisy = time(guided step, DA classifier) / time(guided step, noisy classifier)

The floor is the network work a guided step cannot avoid, written here with the bare modules:
- noisy classifier: one UNet forward (no graph), then the classifier forward on x_t and its backward to x_t;
- DA classifier: one UNet forward inside the graph (x0_hat needs the very eps the sampler needs), x0_hat, the
  classifier forward on (x_t, x0_hat), and one backward through the classifier and the UNet.
The guided step is `sample_ddim(ClassifierGuidance(den, clf, 1.0), x, [t], extra_args=dict(y=y))`: the wrapper's
eps (its checks, the label gather, eps' = eps - sigma * scale * grad) plus the DDIM update with clipping.
Target: each ratio within 1.15x. DA over noisy is printed, with no target: it is the price of the gradient through
the score network (paper §5), about one UNet backward per step.
The UNet is the embedded architecture (`scoremodel.make_unet`, random weights: timing only); the classifiers are
`TimeCNN`s of the default width. Interleaved (A, B, C, D, A, ...) so a busy machine slows all alike; medians.

Usage:  python bench/bench_guidance.py [--reps 5] [--batch 64] [--t 500] [--threads N]
"""
from __future__ import annotations
import argparse
import torch
from _interleave import interleaved
from diffaug_nb.diffusion import Denoiser, vp_scheduler
from diffaug_nb.scoremodel import make_unet
from diffaug_nb.sampling import sample_ddim
from diffaug_nb.guidance import make_guidance_classifier, ClassifierGuidance


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=5)
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--t', type=int, default=500)
    ap.add_argument('--width', type=int, default=32, help='guidance-classifier width')
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--target', type=float, default=1.15)
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    den = Denoiser(make_unet(), vp_scheduler()).eval()
    clf = dict(noisy=make_guidance_classifier('noisy', width=a.width).eval(), DA=make_guidance_classifier('da', den, width=a.width).eval())
    x, y = torch.randn(a.batch, 1, 28, 28), torch.arange(a.batch) % 10
    tt = torch.full((a.batch,), a.t)
    s, m = den.sigma(a.t, x), den.m_scale(a.t, x)

    def logp(logits): return logits.log_softmax(-1).gather(1, y[:, None]).sum()

    def floor_noisy():
        with torch.no_grad(): den.unet(x, tt).sample
        xr = x.detach().requires_grad_()
        torch.autograd.grad(logp(clf['noisy'](xr, tt)), xr)

    def floor_da():
        xr = x.detach().requires_grad_()
        eps = den.unet(xr, tt).sample
        x0 = ((xr - s * eps) / m).clamp(-1, 1)
        torch.autograd.grad(logp(clf['DA'].net(xr, tt, x0)), xr)

    guides = {k: ClassifierGuidance(den, c, 1.0) for k, c in clf.items()}
    def step(k): return lambda: sample_ddim(guides[k], x, [a.t], extra_args=dict(y=y))
    fns = dict(A=step('noisy'), B=floor_noisy, C=step('DA'), D=floor_da)
    labels = dict(A='guided step, noisy', B='floor, noisy', C='guided step, DA', D='floor, DA')
    med = interleaved(fns, a.reps, a.warmup)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {a.batch}, t {a.t}, classifier width {a.width}, "
          f"reps {a.reps} (after {a.warmup} warm-up)")
    out = {}
    for clock, md in med.items():
        for k in fns: print(f"{clock:4s} {k} {labels[k]:20s} median {1e3 * md[k]:8.1f} ms")
        out[clock] = dict(noisy=md['A'] / md['B'], DA=md['C'] / md['D'], da_over_noisy=md['C'] / md['A'])
    for clock, r in out.items():
        for k in ('noisy', 'DA'):
            print(f"guided step / floor, {k:5s} ({clock} time, medians) = {r[k]:.3f}; target <= {a.target}: "
                  f"{'PASS' if r[k] <= a.target else 'FAIL'}")
        print(f"DA guidance / noisy guidance ({clock} time, medians) = {r['da_over_noisy']:.2f}x")
    return out


if __name__ == '__main__':
    main()
