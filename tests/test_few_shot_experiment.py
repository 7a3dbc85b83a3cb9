"End-to-end run of nbs/experiments/few_shot.ipynb with papermill (through the sweep runner) at tiny sizes."
import json
from pathlib import Path
import pandas as pd, pytest, torch
from diffaug_nb.diffusion import Denoiser, tiny_unet, vp_scheduler
from diffaug_nb.augment import SDEdit
from diffaug_nb.data import load_mnist5k
from diffaug_nb.dafusion import FEW_SHOT_METHODS, SEED003_CLAIMS, generate_copies, few_shot_indices, load_copies
from diffaug_nb.sweep import run_notebook

NB = Path(__file__).resolve().parents[1]/'nbs'/'experiments'/'few_shot.ipynb'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('few_shot')
    torch.manual_seed(0)
    Denoiser(tiny_unet(28, 1, 8), vp_scheduler()).save_pretrained(tmp/'model')   # untrained: fast, exercises the code
    params = dict(shots=[1, 2], seeds=[0, 1], full=['baseline', 'diffaug'], n_full=40, model=str(tmp/'model'), M=2, strengths=[0.25, 0.5],
                  img2img_steps=4, train_steps=2, batch_size=8, n_test=40, cache_dir=str(tmp/'cache'), device='cpu', png=False)
    st = run_notebook(NB, params, tmp/'run')
    assert st['status'] == 'ok', st.get('traceback', st['error'])
    return dict(dir=tmp/'run', tmp=tmp, params=params, metrics=json.loads((tmp/'run'/'metrics.json').read_text()),
                res=pd.read_csv(tmp/'run'/'accuracy_long.csv', dtype={'shots': str}))


def test_every_method_shot_and_seed(run):
    res, m = run['res'], run['metrics']
    few = res[res.shots != 'full']
    assert sorted(zip(few.method, few.shots, few.seed)) == sorted((a, s, sd) for a in FEW_SHOT_METHODS for s in ('1', '2') for sd in (0, 1))
    assert sorted(zip(*res[res.shots == 'full'][['method', 'seed']].values.T)) == [('baseline', 0), ('baseline', 1), ('diffaug', 0), ('diffaug', 1)]
    assert ((0 <= res.acc) & (res.acc <= 100)).all() and (res[res.shots == 'full'].n_train == 40).all()
    assert set(m['table2']) == set(FEW_SHOT_METHODS) and set(m['table2']['baseline']) == {'1', '2', 'full'}
    md = (run['dir']/'table2.md').read_text()
    assert 'DA-Fusion + MixUp (0.5)' in md and 'RandAugment (2, 1)' in md and '±' in md and '78.35' in md
    t = pd.read_csv(run['dir']/'table2.csv', index_col=0)
    assert t.loc['mixup', '1'] == pytest.approx(res[(res.method == 'mixup') & (res.shots == '1')].acc.mean())
    for f in ('copies.png', 'accuracy_vs_shots.html', 'cost.csv', 'findings.csv'): assert (run['dir']/f).stat().st_size > 100, f


def test_copies_cached_with_provenance_and_costed(run):
    p, res = run['params'], run['res']
    sets = run['metrics']['dafusion']['sets']
    assert set(sets) == {'0', '1'} and all(s['n_real'] == 20 for s in sets.values())
    # the notebook's set is the one generate_copies keys for the same inputs: asking again makes nothing
    den = Denoiser.from_pretrained(p['model'], device='cpu')
    xtr, ytr = load_mnist5k('train').tensors
    pool = few_shot_indices(ytr, 2, 0)
    path = Path(sets['0']['path'])
    mt = {f.name: f.stat().st_mtime_ns for f in path.glob('*.pt')}
    class Never(SDEdit):
        def __call__(self, *a, **k): raise AssertionError('a cached set was regenerated')
    assert generate_copies(Never(den, steps=4), xtr[pool], ytr[pool], M=2, strengths=p['strengths'], seed=0, cache_dir=p['cache_dir']) == path
    assert {f.name: f.stat().st_mtime_ns for f in path.glob('*.pt')} == mt
    # DA-Fusion rows carry the exact UNet evaluations of their digits' copies (1 or 2 steps at strength 0.25 or 0.5 of 4)
    d = load_copies(path)
    fw = (d['strength'] + 1).sum(1)                                     # strength index 0 -> 1 step, 1 -> 2 steps
    one = res[(res.method == 'dafusion') & (res.shots == '1') & (res.seed == 0)].iloc[0]
    rows = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]                          # the first of each class's two pool digits
    assert one.gen_forwards == int(fw[rows].sum()) and one.n_copies == 20
    cost = pd.read_csv(run['dir']/'cost.csv', index_col=0, dtype={'shots': str})
    assert cost.loc['2', 'DA-Fusion evaluations (offline)'] == pytest.approx(res[(res.method == 'dafusion') & (res.shots == '2')].gen_forwards.mean())
    assert cost.loc['1', 'DiffAug evaluations (per run)'] == 2 * 8          # 2 steps x batch 8


def test_findings_follow_the_numbers(run):
    "Each verdict is recomputed here from accuracy_long.csv: the notebook's findings are computed, not written in."
    res, f = run['res'], pd.read_csv(run['dir']/'findings.csv', index_col=0)
    assert set(SEED003_CLAIMS[i][0] for i in range(len(SEED003_CLAIMS))) <= set(f.index)
    few = res[res.shots != 'full']
    piv = few.pivot_table(index=['shots', 'seed'], columns='method', values='acc')
    for claim, kind, a, b in SEED003_CLAIMS:
        for s in ('1', '2'):
            v = piv.loc[s]
            if kind == 'best': ok = v[list(b)].mean()[a] >= v[list(b)].mean().drop(a).max()
            else:
                d = (v[a] - v[b]).mean()
                ok = d > 0 if kind == 'gt' else d < 0 if kind == 'lt' else d <= 0
            assert bool(f.loc[claim, f'holds_{s}']) == bool(ok), (claim, s)
        n = sum(bool(f.loc[claim, f'holds_{s}']) for s in ('1', '2'))
        assert f.loc[claim, 'verdict'] == {2: 'holds', 0: 'does not hold'}.get(n, 'holds at 1 of 2')
    out = (run['dir']/'stdout.log').read_text()
    assert 'claims hold at every shot count' in out and 'metrics.json' in out
