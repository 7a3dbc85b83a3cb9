"""How long one move of the explorer's t slider takes on a 28-px model: the kernel-side re-render (recompute x_t,
x0_hat, every classifier's probabilities and entropy, patch the FigureWidget) for each tab that follows the slider.

The denoiser is `diffaug_nb.scoremodel.make_unet()` (the embedded UNet's architecture, ~1.06M parameters; random
weights unless `--trained`: the cost does not depend on them); the classifiers are the project's small CNN
(`diffaug_nb.train.make_classifier('cnn')`), untrained unless `--trained` (then the cached plain and DiffAug ones). Each configuration moves the slider
`--moves` times (t = 10, 30, 50, ...) after one warm-up move and reports the median and max per move, plus the
explorer's start-up time (the entropy curve and DE members, computed once per seed). The Jacobian tab computes
on demand (`top_singular`, k=6), timed separately.

    python bench/bench_explorer.py [--images 3] [--classifiers 2] [--moves 15] [--threads N] [--trained] [--json out.json]
"""
import argparse, json, statistics, time
import torch

from diffaug_nb.diffusion import Denoiser, vp_scheduler
from diffaug_nb.scoremodel import make_unet, load_denoiser
from diffaug_nb.train import make_classifier, get_classifier
from diffaug_nb.widgets import explore


def moves(ex, n:int)->list:
    "Wall-clock seconds of `n` slider moves (each `ex.t.value = v` re-renders synchronously)."
    ex.t.value = 5   # warm-up
    out = []
    for i in range(n):
        t0 = time.perf_counter(); ex.t.value = 10 + 20 * i; out.append(time.perf_counter() - t0)
        assert ex.last_error is None, ex.last_error
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--images', type=int, default=3, help='images (rows) in the explorer')
    ap.add_argument('--classifiers', type=int, default=2, help='classifiers compared')
    ap.add_argument('--moves', type=int, default=15)
    ap.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (0: leave as is)')
    ap.add_argument('--trained', action='store_true', help='the embedded score model and cached classifiers')
    ap.add_argument('--json', default=None)
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.trained:
        den = load_denoiser(train_if_absent=False, device='cpu')
        clfs = {'plain': get_classifier(progress=False, device='cpu')}
        try: clfs['DiffAug'] = get_classifier(diffaug=True, train_if_absent=False, progress=False, device='cpu')
        except FileNotFoundError: pass
    else:
        den = Denoiser(make_unet(28), vp_scheduler()).eval()
        clfs = {}
    for i in range(len(clfs), a.classifiers): clfs[f'cnn{i}'] = make_classifier('cnn', channels=1, n_classes=10).eval()
    images = list(range(a.images))
    res = dict(threads=torch.get_num_threads(), images=a.images, classifiers=len(clfs), trained=a.trained,
               n_params=sum(p.numel() for p in den.parameters()))
    t0 = time.perf_counter()
    ex = explore(clfs, den, images, t=0, panels=('de', 'gradient', 'jacobian'))
    res['startup_s'] = time.perf_counter() - t0
    for name, tab in [('main + DE tab', 0), ('main + gradient tab', 1)]:
        ex.tabs.selected_index = tab
        ts = moves(ex, a.moves)
        res[name] = dict(median_ms=1e3 * statistics.median(ts), max_ms=1e3 * max(ts), moves=len(ts))
    ex.tabs.selected_index = 2   # builds the Jacobian figure (one top_singular)
    t0 = time.perf_counter(); ex.panels['jacobian'].button.click(); res['jacobian_compute_s'] = time.perf_counter() - t0
    assert ex.last_error is None, ex.last_error
    ts = moves(ex, a.moves)      # Jacobian tab open, not following: only the main figure re-renders
    res['main + Jacobian tab (on demand)'] = dict(median_ms=1e3 * statistics.median(ts), max_ms=1e3 * max(ts), moves=len(ts))
    print(json.dumps(res, indent=1))
    if a.json: open(a.json, 'w').write(json.dumps(res, indent=1))
    return res


if __name__ == '__main__': main()
