"""bench/gpu_smoke.py --tiny runs every stage end to end on the CPU (a functional check of the GPU script; no timings asserted)."""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_smoke_tiny_runs_every_stage(tmp_path):
    out = tmp_path / 'smoke.json'
    r = subprocess.run([sys.executable, str(ROOT / 'bench' / 'gpu_smoke.py'), '--tiny', '--json', str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res['tiny'] and res['device'] == 'cpu' and res['image_size'] == 32 and res['finite']
    assert set(res['stages']) == {'diffaug-train', 'de', 'ddim', 'ddim-guided'}
    for name, st in res['stages'].items():
        assert set(st) >= {'s_per_step', 'images_per_s', 'peak_mb'} and st['peak_mb'] > 0, (name, st)
        assert name in r.stdout
    assert abs(res['de_prob_sum'] - 1) < 1e-4  # DE returns probabilities
    # the tiny UNet is the converter's architecture: learned sigma, so 6 output channels
    assert 'guided-diffusion UNet 32 px' in r.stdout
