"""The full 784 x 784 Jacobian d x0_hat/d x_t of the embedded UNet architecture at one 28 x 28 image:
batched `torch.func` (`diffaug_nb.jacobian.denoiser_jacobian`: jacrev, `chunk_size` cotangents per vmapped backward pass)
against a Python loop of 784 backward passes (one forward with the graph kept, then `torch.autograd.grad` per output pixel).

Both are timed in one run, in interleaved rounds (median of `--repeats`), and must give the same matrix.
The network is `diffaug_nb.scoremodel.make_unet()` (~1.06M parameters; its mid-block attention runs with the
classic processor in both arms, see `diffaug_nb.jacobian.classic_attention`), random weights unless `--trained`.

    python bench/bench_jacobian.py [--chunk-size 196] [--repeats 3] [--t 300] [--threads N] [--width 32] [--trained]

Measured here (2026-11-22, 2-core CPU shared with other jobs, load ~8, torch on 1 thread), median of 2 rounds:
  width 32 (embedded, 1.06M params): batched 20.7 s, loop 18.4 s -> 0.9x
  width 8  (68k params)            : batched 3.3 s,  loop 4.9 s  -> 1.5x
On one CPU thread each batch-1 backward pass of the embedded UNet is already compute-bound, and vmapping the
cotangents does the same FLOPs (GroupNorm's backward even runs decomposed under vmap), so batching buys little;
its gain is per-call overhead, which dominates on a GPU (and for small networks), not on this CPU.
"""
import argparse, json, statistics
import torch

from diffaug_nb.config import get_device
from diffaug_nb.diffusion import Denoiser, vp_scheduler
from diffaug_nb.scoremodel import make_unet, load_denoiser
from diffaug_nb.jacobian import denoiser_jacobian, classic_attention
from _interleave import rounds, device_sync


def loop_jacobian(den, x, t):
    "J[i] = d x0_hat_i / d x by one backward pass per output pixel (the graph of one forward pass is reused)."
    D = x[0].numel()
    with classic_attention(den), torch.enable_grad():
        x = x.detach().clone().requires_grad_()
        out = den.x0_hat(x, t).reshape(-1)
        rows = [torch.autograd.grad(out[i], x, retain_graph=i < D - 1)[0].reshape(-1) for i in range(D)]
    return torch.stack(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--chunk-size', type=int, default=196, help='cotangents per vmapped backward pass (0: all 784)')
    ap.add_argument('--repeats', type=int, default=3, help='interleaved rounds; the median is reported')
    ap.add_argument('--t', type=int, default=300)
    ap.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (0: leave as is)')
    ap.add_argument('--width', type=int, default=32, help='UNet base width (32 = the embedded architecture; smaller = less compute per pass)')
    ap.add_argument('--trained', action='store_true', help='use the embedded trained weights (timing does not depend on them)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--json', default=None)
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    dev = get_device(a.device)
    torch.manual_seed(0)
    den = load_denoiser(train_if_absent=False, device=dev) if a.trained else Denoiser(make_unet(width=a.width), vp_scheduler()).to(dev)
    den = den.eval()
    for p in den.parameters(): p.requires_grad_(False)
    x = torch.randn(1, 1, 28, 28, device=dev)
    cs = a.chunk_size or None
    batched = lambda: denoiser_jacobian(den, x, a.t, chunk_size=cs)[0]
    loop = lambda: loop_jacobian(den, x, a.t)
    J1, J2 = batched(), loop()          # warm-up, and the two must agree
    err = ((J1 - J2).abs().max() / J2.abs().max()).item()
    assert err < 1e-4, f'batched and looped Jacobians differ: {err:.2e}'
    r = rounds(dict(batched=batched, loop=loop), a.repeats, warmup=0, sync=device_sync(dev))   # warmed up above
    tb, tl = r.wall['batched'], r.wall['loop']
    mb, ml = statistics.median(tb), statistics.median(tl)
    res = dict(D=784, n_params=sum(p.numel() for p in den.parameters()), chunk_size=cs or 784, threads=torch.get_num_threads(),
               device=str(dev), batched_s=round(mb, 3), loop_s=round(ml, 3), speedup=round(ml / mb, 2), max_rel_diff=err,
               batched_all=[round(v, 3) for v in tb], loop_all=[round(v, 3) for v in tl])
    print(f"784x784 Jacobian of make_unet(width={a.width}) ({res['n_params']:,} params), t={a.t}, {res['threads']} thread(s), {dev}")
    print(f"  torch.func batched (jacrev, chunk_size={res['chunk_size']}): {mb:.2f} s   (rounds: {res['batched_all']})")
    print(f"  loop of 784 backward passes                  : {ml:.2f} s   (rounds: {res['loop_all']})")
    print(f"  speed-up {ml / mb:.1f}x   (same matrix: max rel. diff {err:.1e})")
    if a.json:
        with open(a.json, 'w') as f: json.dump(res, f, indent=1)
    return res


if __name__ == '__main__':
    main()
