"""DE vs DDA wall-clock per image on the same batch (paper Table 7: DE 0.5 s, DDA 4.75 s per image on an A40, ~10x).

Measured side by side in one run, in interleaved rounds (median of `--repeats`), so both see the same machine load:
  * default : the classifier alone
  * DE      : `predict_de` with S = {0, 50, ..., 450} (|S| = 10)
  * DE floor: the least work DE must do, per t in S: draw noise, x_t = sqrt(abar) x + sigma z, one UNet forward,
              x0_hat = (x_t - sigma eps)/sqrt(abar), clamp, one classifier forward, softmax (no bookkeeping)
  * DDA     : `predict_dda` (t_start=500, 50 guided ancestral steps, the classifier on the adapted batch)
  * DDA floor: the least work DDA must do: diffuse to t_start, then per step one UNet forward + backward w.r.t. x_t
              through x0_hat and the low-pass filter of x0_hat (the guidance gradient), the ancestral update with its
              noise; the reference's low-pass once; the classifier once on the adapted batch
The floors are lower bounds by construction (every operation in them is one the real path must do), so
"DE / DE floor" and "DDA / DDA floor" are the overheads of the implementations. The paper's Table 7 figures are
quoted apart, never mixed with the numbers measured here.
The denoiser is the embedded UNet architecture (`diffaug_nb.scoremodel.make_unet`), with the trained weights when
they are present and random ones otherwise (timing does not depend on the weights); the classifier the project's small CNN
(`diffaug_nb.train.make_classifier('cnn')`, random weights).

    python bench/bench_de_vs_dda.py [--n 64] [--repeats 3] [--steps 50] [--device cpu]
"""
import argparse, json, os
import torch

from diffaug_nb.config import get_device
from diffaug_nb.data import load_mnist5k
from diffaug_nb.diffusion import Denoiser, vp_scheduler, to_model
from diffaug_nb.scoremodel import make_unet, embedded_model_dir, is_trained, load_denoiser
from diffaug_nb.evaluate import predict_default, predict_de, predict_dda, lowpass, default_D, dda_timesteps
from diffaug_nb.train import make_classifier
from _interleave import rounds, device_sync

PAPER_TABLE7 = {'DE': 0.5, 'DDA': 4.75}   # seconds per image on an A40 GPU, quoted from the paper (not measured here)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=64, help='images in the batch (one batch for every mode)')
    ap.add_argument('--repeats', type=int, default=3, help='interleaved rounds; the median is reported')
    ap.add_argument('--steps', type=int, default=50, help='DDA reverse steps')
    ap.add_argument('--t-start', type=int, default=500, help='DDA start time')
    ap.add_argument('--device', default=None, help="'auto', 'cpu', 'cuda' (default: settings.ini / DIFFAUG_DEVICE)")
    ap.add_argument('--json', default=None, help='also write the numbers to this JSON file')
    a = ap.parse_args(argv)

    dev = get_device(a.device)
    trained = is_trained(embedded_model_dir())
    den = (load_denoiser(device=dev, train_if_absent=False) if trained
           else Denoiser(make_unet(), vp_scheduler()).to(dev).eval())
    torch.manual_seed(0)
    clf = make_classifier('cnn').to(dev).eval()
    x = load_mnist5k('test').tensors[0][:a.n]
    ts = list(range(0, 451, 50))
    B = a.n

    abar = lambda t: den.abar(t).to(dev).reshape(-1, 1, 1, 1)

    def de_floor():
        xm = to_model(x.to(dev))
        with torch.no_grad():
            for t in ts:
                ab, tt = abar(t), torch.full((len(xm),), t, device=dev, dtype=torch.long)
                xt = ab.sqrt() * xm + (1 - ab).sqrt() * torch.randn_like(xm)
                x0 = ((xt - (1 - ab).sqrt() * den.unet(xt, tt).sample) / ab.sqrt()).clamp(-1, 1)
                torch.softmax(clf((x0 + 1) / 2), -1)

    def dda_floor():
        xm = to_model(x.to(dev))
        D, taus = default_D(xm.shape[-1]), dda_timesteps(a.t_start, a.steps)
        ref = lowpass(xm, D)
        ab = abar(taus[0])
        xt = ab.sqrt() * xm + (1 - ab).sqrt() * torch.randn_like(xm)
        for t, tp in zip(taus[:-1], taus[1:]):
            ab, abp = abar(t), abar(tp)
            xi = xt.detach().requires_grad_()
            eps = den.unet(xi, torch.full((len(xm),), t, device=dev, dtype=torch.long)).sample
            x0 = (xi - (1 - ab).sqrt() * eps) / ab.sqrt()
            g, = torch.autograd.grad((ref - lowpass(x0, D)).flatten(1).norm(dim=1).sum(), xi)
            with torch.no_grad():
                s_ = ((1 - abp) / (1 - ab)).sqrt() * (1 - ab / abp).sqrt()
                xt = abp.sqrt() * x0.clamp(-1, 1) + (1 - abp - s_**2).clamp_min(0).sqrt() * eps + s_ * torch.randn_like(xm) - g
        with torch.no_grad(): torch.softmax(clf((xt.clamp(-1, 1) + 1) / 2), -1)

    jobs = {
        'default': lambda: predict_default(clf, x, B, dev, progress=False),
        'DE': lambda: predict_de(clf, den, x, ts, B, dev, seed=0, progress=False),
        'DE floor': de_floor,
        'DDA': lambda: predict_dda(clf, den, x, False, B, dev, 0, False, t_start=a.t_start, steps=a.steps),
        'DDA floor': dda_floor,
    }
    jobs['DE']()  # warm-up (allocations, kernels)
    r = rounds(jobs, a.repeats, warmup=0, sync=device_sync(dev), per=a.n)   # seconds per image
    times, med = r.wall, r.median('wall')

    print(f"device={dev} threads={torch.get_num_threads()} load={os.getloadavg()[0]:.2f} batch={a.n} images "
          f"|S|={len(ts)} DDA steps={a.steps} t_start={a.t_start} UNet={'trained' if trained else 'random'} "
          f"({sum(p.numel() for p in den.unet.parameters())/1e6:.2f}M params) classifier="
          f"{sum(p.numel() for p in clf.parameters())/1e6:.2f}M params repeats={a.repeats}")
    for k, v in med.items():
        print(f"  {k:10s} {v*1e3:9.2f} ms/image   (rounds: {', '.join(f'{t*1e3:.2f}' for t in times[k])})")
    ratios = {'DDA / DE': med['DDA'] / med['DE'], 'DE / DE floor': med['DE'] / med['DE floor'],
              'DDA / DDA floor': med['DDA'] / med['DDA floor'], 'DE / default': med['DE'] / med['default']}
    # paired per round: both modes ran back to back under the same load, so the round-wise ratio drifts less
    ratios.update({'DDA / DE (paired rounds)': r.paired('DDA', 'DE'), 'DE / DE floor (paired)': r.paired('DE', 'DE floor')})
    for k, v in ratios.items(): print(f"  {k:26s} {v:6.2f}x")
    print(f"quoted, not measured here (paper Table 7, A40 GPU): DE {PAPER_TABLE7['DE']} s, DDA {PAPER_TABLE7['DDA']} s "
          f"per image, DDA / DE {PAPER_TABLE7['DDA'] / PAPER_TABLE7['DE']:.1f}x")
    if a.json:
        with open(a.json, 'w') as fh:
            json.dump(dict(sec_per_image=med, rounds=times, ratios=ratios, quoted_paper_table7=PAPER_TABLE7, n=a.n, steps=a.steps, t_start=a.t_start,
                           device=str(dev), trained=trained, threads=torch.get_num_threads()), fh, indent=1)
    return med, ratios


if __name__ == '__main__':
    main()
