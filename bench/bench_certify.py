"""Certification throughput (Diffusion Denoised Smoothing + Cohen's CERTIFY) against its floor, side by side in one run.

  * certify : `diffaug_nb.certify.certify` on one test digit: N0 selection + N estimation draws (seeded noise, the DDS
              scaling, one-step x0_hat with clamping, argmax votes, the Clopper-Pearson bound)
  * floor   : the forwards it cannot avoid: N0 + N bare UNet forwards and N0 + N classifier forwards, in the same batches
              (one fixed input batch, no noise drawing, no counting, no statistics)
  * floor N : N forwards only (the floor as the issue words it; certify also spends N0 draws on picking the class)
Interleaved rounds (median of `--repeats`), so both see the same machine load; the ratio certify / floor should be <= 1.1.
The denoiser is the default score model when it is trained (random weights of the same architecture otherwise; timing
does not depend on the weights), the classifier the committed baseline CNN (a random one of the same kind otherwise).

    python bench/bench_certify.py [--n 1000] [--n0 100] [--batch-size 500] [--sigma 0.5] [--repeats 3] [--device cpu]
"""
import argparse, json, os
import torch

from diffaug_nb.config import get_device
from diffaug_nb.data import load_mnist5k
from diffaug_nb.diffusion import Denoiser, vp_scheduler, to_model
from diffaug_nb.scoremodel import make_unet, embedded_model_dir, is_trained, load_denoiser
from diffaug_nb.train import get_classifier, make_classifier
from diffaug_nb.certify import certify, dds_timestep
from _interleave import rounds, device_sync


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=1000, help='estimation draws N')
    ap.add_argument('--n0', type=int, default=100, help='selection draws N0')
    ap.add_argument('--batch-size', type=int, default=500)
    ap.add_argument('--sigma', type=float, default=0.5, help='smoothing noise in [0,1] units')
    ap.add_argument('--repeats', type=int, default=3, help='interleaved rounds; the median is reported')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--json', default=None, help='also write the numbers to this JSON file')
    a = ap.parse_args(argv)

    dev = get_device(a.device)
    trained = is_trained(embedded_model_dir())
    den = (load_denoiser(device=dev, train_if_absent=False) if trained
           else Denoiser(make_unet(), vp_scheduler()).to(dev).eval())
    try:
        clf, clf_name = get_classifier('none', diffaug=False, train_if_absent=False, device=dev, progress=False), 'committed baseline CNN'
    except FileNotFoundError:
        torch.manual_seed(0); clf, clf_name = make_classifier('cnn').to(dev).eval(), 'random CNN'
    x = load_mnist5k('test').tensors[0][:1]
    t = dds_timestep(den, a.sigma)
    B = a.batch_size
    sizes = lambda num: [min(B, num - i) for i in range(0, num, B)]
    xm = to_model(x.to(dev)).expand(B, -1, -1, -1).contiguous()
    tt = torch.full((B,), t, device=dev, dtype=torch.long)

    def floor(nums):
        with torch.no_grad():
            for num in nums:
                for b in sizes(num):
                    clf(den.unet(xm[:b], tt[:b]).sample.clamp(-1, 1))

    jobs = {
        'certify': lambda: certify(clf, den, x, a.sigma, a.n0, a.n, 0.001, B, torch.Generator().manual_seed(0), dev, progress=False),
        'floor': lambda: floor([a.n0, a.n]),
        'floor N': lambda: floor([a.n]),
    }
    floor([B])  # warm-up (allocations, kernels)
    r = rounds(jobs, a.repeats, warmup=0, sync=device_sync(dev))
    times, med, out = r.wall, r.median('wall'), r.last['certify']
    draws = a.n0 + a.n
    print(f"device={dev} threads={torch.get_num_threads()} load={os.getloadavg()[0]:.2f} sigma={a.sigma} t*={t} "
          f"N0={a.n0} N={a.n} batch={B} UNet={'trained' if trained else 'random'} "
          f"({sum(p.numel() for p in den.unet.parameters())/1e6:.2f}M params) classifier={clf_name} repeats={a.repeats}")
    print(f"  certify result on test digit 0: {out}")
    for k, v in med.items():
        n_fw = a.n if k == 'floor N' else draws
        print(f"  {k:8s} {v:8.3f} s/image  {v / n_fw * 1e3:7.3f} ms/draw   (rounds: {', '.join(f'{s:.3f}' for s in times[k])})")
    ratios = {'certify / floor': med['certify'] / med['floor'], 'certify / floor (paired rounds)': r.paired('certify', 'floor'),
              'certify / floor N': med['certify'] / med['floor N']}
    for k, v in ratios.items(): print(f"  {k:32s} {v:6.3f}x")
    ok = ratios['certify / floor (paired rounds)'] <= 1.1
    print(f"  target certify / floor <= 1.1x: {'met' if ok else 'NOT met'}")
    if a.json:
        with open(a.json, 'w') as fh:
            json.dump(dict(sec_per_image=med, rounds=times, ratios=ratios, n=a.n, n0=a.n0, batch_size=B, sigma=a.sigma, t=t,
                           device=str(dev), trained=trained, threads=torch.get_num_threads(), result=list(out)), fh, indent=1)
    return med, ratios


if __name__ == '__main__':
    main()
