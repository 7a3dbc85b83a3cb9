"""OOD scoring in one batched pass against its floor, measured side by side in one run.

    ratio = time(every detector's scores on every set: `classifier_outputs` + `detector_scores`)
            / time(one classifier forward over the same images, same batches, no grad)

Scoring a set with all seven detectors of `diffaug_nb.ood` (MSP, Energy, ReAct, ASH-P/-B/-S, SCALE) needs one
pass of the classifier over the images: the penultimate features and the logits come out of it, and every
detector is a cheap function of them (the linear head re-applied to shaped features). So the floor is one
classifier forward; what scoring adds beyond it (keeping features, the softmax, the shaping, the head
re-applications, moving to the CPU) is overhead. Target: ratio <= 1.1.

The sets are those of the embedded default (`ood_datasets()`: the ID test digits 0-5, near-OOD digits 6-9 and the
four synthetic far-OOD sets, about 3,400 images); the classifier a 6-class small CNN (or --arch resnet18) with random
weights (timing only). ReAct's threshold is fitted once before timing (a per-classifier cost, printed apart).
The two measurements are interleaved (A, B, A, B, ...) so a busy machine slows both alike; medians of wall-clock
and of process CPU time are reported.

Usage:  python bench/bench_ood.py [--reps 7] [--batch 256] [--arch cnn] [--threads N]
"""
from __future__ import annotations
import argparse, time
import torch
from diffaug_nb.data import load_mnist5k
from diffaug_nb.train import make_classifier, subset_classes
from diffaug_nb.ood import ood_datasets, classifier_outputs, detector_scores, react_threshold, DETECTORS
from _interleave import interleaved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=7, help='timed repetitions of each measurement')
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--arch', default='cnn', choices=['cnn', 'resnet18'])
    ap.add_argument('--n', type=int, default=None, help='images per set (default: all)')
    ap.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
    ap.add_argument('--target', type=float, default=1.1)
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    clf = make_classifier(a.arch, n_classes=6).eval()
    sets = ood_datasets(n=a.n)
    xfit = subset_classes(load_mnist5k('train').tensors, range(6))[0][:1000]
    t0 = time.perf_counter(); c = react_threshold(classifier_outputs(clf, xfit, a.batch, 'cpu')['feats']); t_fit = time.perf_counter() - t0

    def score():  # A: every detector on every set, one batched pass per set
        return {k: detector_scores(classifier_outputs(clf, x, a.batch, 'cpu'), clf.head, DETECTORS, react_c=c) for k, x in sets.items()}

    @torch.no_grad()
    def floor():  # B: one classifier forward over the same images, same batches
        for x in sets.values():
            for i in range(0, len(x), a.batch): clf(x[i:i+a.batch])

    fns = dict(A=score, B=floor)
    meds = interleaved(fns, a.reps, a.warmup)
    n = sum(len(x) for x in sets.values())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {a.arch} ({sum(p.numel() for p in clf.parameters()):,} params), "
          f"batch {a.batch}, {n} images in {len(sets)} sets ({', '.join(f'{k} {len(x)}' for k, x in sets.items())}), "
          f"reps {a.reps} (after {a.warmup} warm-up)")
    print(f"ReAct threshold fitted once on {len(xfit)} ID training digits in {t_fit*1e3:.0f} ms (not in A)")
    labels = dict(A=f'scores of {len(DETECTORS)} detectors', B='one classifier forward (floor)')
    ratios = {}
    for clock, med in meds.items():
        for k in fns: print(f"{clock:4s} {k} {labels[k]:32s} median {med[k]*1e3:8.1f} ms  ({med[k]/n*1e6:6.1f} us/image)")
        ratios[clock] = med['A'] / med['B']
    for clock, r in ratios.items():
        print(f"ratio A/B ({clock} time, medians) = {r:.3f}; target <= {a.target}: {'PASS' if r <= a.target else 'FAIL'}")
    return ratios


if __name__ == '__main__':
    main()
