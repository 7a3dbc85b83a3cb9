"End-to-end run of nbs/experiments/robustness.ipynb with papermill (through the sweep runner) at tiny sizes."
import json, math
from pathlib import Path
import pandas as pd, pytest, torch
from diffaug_nb.diffusion import Denoiser, tiny_unet, vp_scheduler
from diffaug_nb.data import load_mnist5k
from diffaug_nb.corruptions import corrupt
from diffaug_nb.train import get_classifier
from diffaug_nb.sweep import run_sweep, run_id

NB = Path(__file__).resolve().parents[1]/'nbs'/'experiments'/'robustness.ipynb'
# two policies x two seeds = 4 classifiers (1 epoch each); cutout is a cheap per-image policy, [0,500] a DiffAug range
POLICIES = ['cutout', 'cutout+diffaug[0,500]']
MODES = ['default', 'de', 'dda', 'dda_se']
CORR = ['gaussian_noise', 'defocus_blur', 'fog', 'pixelate']


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('robustness')
    torch.manual_seed(0)
    Denoiser(tiny_unet(28, 1, 8), vp_scheduler()).save_pretrained(tmp/'model')   # untrained: fast, exercises the code
    fixed = dict(policies=POLICIES, modes=MODES, model=str(tmp/'model'), epochs=1, cache_dir=str(tmp/'cache'),
                 corruptions=CORR, n_clean=40, n_per_corruption=6, n_dda_clean=4, n_dda_per_corruption=2,
                 dda_t_start=100, dda_steps=4, entropy_ts=[0, 500, 999], n_entropy=16, ablation_steps=[25, 50],
                 ablation_max_t=200, n_ablation_per_corruption=3, batch_size=64, device='cpu')
    df = run_sweep(NB, dict(seeds=[[0, 1]]), out_dir=tmp/'sweep', fixed=fixed, progress=False)
    assert df.status.tolist() == ['ok'], df.error.tolist()
    folder = tmp/'sweep'/run_id(dict(fixed, seeds=[0, 1]))
    return dict(tmp=tmp, fixed=fixed, df=df, folder=folder, metrics=json.loads((folder/'metrics.json').read_text()))


def test_every_policy_and_mode(run):
    m = run['metrics']
    assert set(m['accuracy']) == set(POLICIES)
    for p in POLICIES:
        assert set(m['accuracy'][p]) == set(MODES), p
        for mode in MODES:
            a = m['accuracy'][p][mode]
            for part in ('clean', 'corrupted'):
                assert 0 <= a[part] <= 100 and len(a[f'{part}_per_seed']) == 2, (p, mode, part)
                assert a[f'{part}_std'] is not None and a[f'{part}_std'] >= 0
    # Table 1 shape: policies + the three average rows, (corrupted | clean) x (4 modes + Avg)
    t1 = m['table1']
    assert list(t1) == POLICIES + ['Avg', 'Avg (No-DiffAug)', 'Avg (DiffAug)']
    assert len(t1['cutout']) == 10 and any(k.startswith('Clean') and k.endswith('DE') for k in t1['cutout'])
    assert t1['Avg (DiffAug)'] == t1['cutout+diffaug[0,500]']
    assert m['policies']['cutout+diffaug[0,500]'] == dict(name='cutout+diffaug[0,500]', policy='cutout', diffaug=True, t_min=0, t_max=500)
    # Table 5 shape: every mode|policy has every corruption, and families are their means
    assert set(m['per_corruption']) == {f'{mo}|{p}' for mo in MODES for p in POLICIES}
    assert all(set(v) == set(CORR) for v in m['per_corruption'].values())
    assert set(m['per_family']['de|cutout']) == {'noise', 'blur', 'weather', 'digital', 'Avg'}
    assert set(m['rel_improvement']) == {f'{mo}|{p}' for mo in MODES for p in ('cutout+diffaug[0,500]',)}
    # Fig. 2, Fig. 10/11, Table 7
    assert m['entropy_vs_t']['t'] == [0, 500, 999]
    assert all(0 <= e <= math.log(10) + 1e-4 for p in POLICIES for e in m['entropy_vs_t'][p])
    steps = {(r['curve'], r['step']) for r in m['de_ablation']}
    assert steps == {('DE', 25), ('DE', 50), ('single t', None)}
    # Table 7's timed calls, counted (a hook on the UNet): DE denoises each image once per t in S (|S| = 10), DDA runs
    # dda_steps guided steps plus the step to the clean estimate, on the DDA digits of every seed
    w, f = m['wallclock'], run['fixed']
    assert w['de_denoiser_forwards_per_image'] == len(m['S']) == 10
    assert w['dda_denoiser_forwards_per_image'] == f['dda_steps'] + 1
    assert [(c['de_forwards'], c['dda_forwards']) for c in w['per_seed']] == [(10 * c['de_n'], 5 * c['dda_n']) for c in w['per_seed']]
    assert [c['dda_n'] for c in w['per_seed']] == [4 + 4 * 2] * 2
    assert m['n'] == dict(clean=40, per_corruption=6, dda=4 + 4 * 2, ablation=4 * 3, entropy=16)
    t = m['timing']                                    # the parts of the wall time add up (training + evaluation <= total)
    assert t['train_s'] + t['eval_s'] <= t['total_s'] + 0.1


def test_figures_and_tables_written(run):
    m, folder = run['metrics'], run['folder']
    for k in ('table1', 'table5', 'entropy_vs_t', 'wallclock', 'de_ablation'):
        assert (folder/f'{k}.html').stat().st_size > 1000, k
        if m['png_error'] is None: assert (folder/f'{k}.png').stat().st_size > 1000, k
    assert (folder/'plotly.min.js').exists()          # the HTML figures open offline
    t1 = pd.read_csv(folder/'table1.csv', header=[0, 1], index_col=0)
    assert t1.shape == (5, 10)
    assert (folder/'table1_std.csv').exists() and (folder/'table5.csv').exists()
    out = (folder/'stdout.log').read_text()
    assert 'Table 1' in out and 'metrics.json' in out and 'table1.html' in out
    # the sweep's results table carries the flattened metrics
    df = run['df']
    assert df.loc[0, 'accuracy.cutout.default.clean'] == pytest.approx(m['accuracy']['cutout']['default']['clean'])


def test_default_accuracy_against_the_classifier(run):
    "Default-mode numbers equal the cached classifiers applied directly to the (corrupted) test digits."
    m, f = run['metrics'], run['fixed']
    x, y = load_mnist5k('test').tensors
    for seed, k in ((0, 0), (1, 1)):
        clf = get_classifier(policy='cutout', diffaug=True, denoiser=f['model'], epochs=1, seed=seed, t_min=0, t_max=500,
                             cache_dir=f['cache_dir'], train_if_absent=False, device='cpu')
        with torch.no_grad():
            clean = (clf(x[:40]).argmax(1) == y[:40]).float().mean().item() * 100
            corr = [(clf(corrupt(x[:6], c, 5, seed=0)).argmax(1) == y[:6]).float().mean().item() * 100 for c in CORR]
        a = m['accuracy']['cutout+diffaug[0,500]']['default']
        assert a['clean_per_seed'][k] == pytest.approx(clean, abs=1e-2)
        assert a['corrupted_per_seed'][k] == pytest.approx(sum(corr) / len(corr), abs=1e-2)
