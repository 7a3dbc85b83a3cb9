"""The score-model trainer's steps/s against a bare training step, side by side in one run.

    ratio = steps/s(train_score_model) / steps/s(bare step)

The bare step is the least work a training step must do: draw a batch, diffuse it, the UNet's forward and
backward, the AdamW update (same UNet, batch and optimiser; no EMA, no learning-rate schedule, no
checkpoints, no progress bar). `train_score_model` adds those; the target is ratio >= 0.95. Both run
`--steps` steps per repetition, interleaved (A, B, A, B, ...), on random-weight UNets; medians reported.
The trainer checkpoints every `--ckpt-every` steps as in real runs (default 100: one save per repetition
of 100 steps).

Usage:  python bench/bench_score_trainer.py [--reps 3] [--steps 20] [--batch 128] [--ckpt-every 100]
"""
from __future__ import annotations
import argparse, tempfile, shutil
from pathlib import Path
import torch, torch.nn.functional as F
from _interleave import interleaved
from diffaug_nb.data import load_mnist5k
from diffaug_nb.diffusion import Denoiser, vp_scheduler, to_model
from diffaug_nb.scoremodel import make_unet, train_score_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--ckpt-every', type=int, default=100)
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--target', type=float, default=0.95)
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    x = load_mnist5k('train').tensors[0]
    xm = to_model(x)
    torch.manual_seed(0)
    unet = make_unet(); den = Denoiser(unet, vp_scheduler())
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def bare():
        for _ in range(a.steps):
            idx = torch.randint(0, len(x), (a.batch,), generator=g)
            t = torch.randint(0, den.T, (a.batch,), generator=g)
            noise = torch.randn((a.batch, *x.shape[1:]), generator=g)
            loss = F.mse_loss(unet(den.diffuse(xm[idx], t, noise), t).sample, noise)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    tmp = Path(tempfile.mkdtemp())
    def trainer():
        d = tmp/'run'; shutil.rmtree(d, ignore_errors=True)
        train_score_model(x, d, steps=a.steps, batch_size=a.batch, lr=1e-4, ckpt_every=a.ckpt_every, progress=False, device='cpu',
                          lr_schedule='cosine', warmup=2)

    fns = dict(A=trainer, B=bare)
    med = interleaved(fns, a.reps)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {a.batch}, {a.steps} steps per rep, reps {a.reps}")
    ratios = {}
    for clock, m in med.items():
        for k, lab in dict(A='train_score_model', B='bare step').items():
            print(f"{clock:4s} {k} {lab:18s} median {m[k]:7.2f} s = {a.steps/m[k]:6.3f} steps/s")
        ratios[clock] = m['B'] / m['A']
    for clock, r in ratios.items():
        print(f"steps/s ratio A/B ({clock} time, medians) = {r:.3f}; target >= {a.target}: {'PASS' if r >= a.target else 'FAIL'}")
    return ratios


if __name__ == '__main__':
    main()
