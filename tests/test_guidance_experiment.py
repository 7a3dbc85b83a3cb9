"End-to-end run of nbs/experiments/guidance.ipynb with papermill (through the sweep runner) at tiny sizes."
import json
from pathlib import Path
import pandas as pd, pytest
from diffaug_nb.sweep import run_notebook

NB = Path(__file__).resolve().parents[1]/'nbs'/'experiments'/'guidance.ipynb'
SEEDS = [0, 1]
N = 30                                           # 3 samples per class: enough for class-wise P/R/D/C with k = 1
FIGS = ('table3', 'fig15_accuracy_vs_t', 'fig4a_gradients', 'fig16_gradients', 'fig17_da_gradient_parts', 'table4', 'scale_sweep',
        'fig4b_pairs')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('guid')
    params = dict(model='embedded-weak', device='cpu', cache_dir=str(tmp/'cache'), seeds=SEEDS, clf_width=8, clf_steps=2, clf_batch_size=8,
                  n_test=40, curve_ts=[0, 500, 999], n_curve=20, n_grad=2, n_samples=N, ddim_steps=3, ddpm_steps=2, n_real=100, prdc_k=1,
                  sweep_scales=[0.0, 2.0], n_sweep=N, sweep_steps=2, n_pairs=4, batch_size=64)
    st = run_notebook(NB, params, tmp/'run')
    assert st['status'] == 'ok', st.get('traceback', st['error'])
    return tmp


def test_table4_has_every_row_and_seed(run):
    df = pd.read_csv(run/'run'/'table4_rows.csv')
    assert sorted(zip(df.classifier, df.sampler, df.seed)) == sorted((c, s, sd) for c in ('none', 'noisy', 'DA')
                                                                     for s in ('DDIM-3', 'DDPM-2') for sd in SEEDS)
    assert (df.n == N).all() and (df.scale == df.classifier.map(dict(none=0., noisy=1., DA=1.))).all()
    assert (df.fid > 0).all() and df.classifier_score.between(1, 10).all() and (df.sec_per_sample > 0).all()
    for c in ('class_share', 'precision', 'recall', 'coverage', 'precision_cw', 'recall_cw', 'coverage_cw'): assert df[c].between(0, 1).all(), c
    assert (df.density >= 0).all() and (df.density_cw >= 0).all()
    # every sampled row is saved for a resume: 3 guides x 2 samplers x 2 seeds, and the sweep's 3 rows
    assert len(list((run/'run'/'rows').glob('row-*.pt'))) == 12 + 3
    # their keys name the classifiers by cache folder, not by absolute path: a moved checkout still resumes
    assert all('/' not in json.loads(f.read_text())['tag'] for f in (run/'run'/'rows').glob('row-*.json'))
    long = pd.read_csv(run/'run'/'table4_long.csv')
    assert list(dict.fromkeys(long.metric)) == ['FID↓', 'IS↑', 'P↑', 'R↑', 'P̃↑', 'R̃↑', 'D̃↑', 'C̃↑', 'class share↑']
    txt = (run/'run'/'tables.txt').read_text()
    assert 'DDPM-2' in txt and 'C̃↑' in txt and '±' in txt            # mean ± std over the two seeds


def test_table3_ablation_and_curve(run):
    acc = pd.read_csv(run/'run'/'table3_accuracy.csv')
    assert sorted(zip(acc.seed, acc.classifier)) == sorted((s, c) for s in SEEDS for c in ('noisy', 'DA')) and acc.accuracy.between(0, 1).all()
    abl = pd.read_csv(run/'run'/'ablation.csv')
    assert sorted(set(abl.input)) == ['both inputs', 'zero denoised', 'zero noisy'] and abl.accuracy.between(0, 1).all()
    both = abl[abl.input == 'both inputs'].set_index('seed').accuracy
    assert (both == acc[acc.classifier == 'DA'].set_index('seed').accuracy).all()     # the same draws as Table 3
    cur = pd.read_csv(run/'run'/'accuracy_vs_t.csv')
    assert len(cur) == len(SEEDS) * 3 * 2 and set(cur.t) == {0, 500, 999}


def test_sweep_figures_and_cache(run):
    sw = pd.read_csv(run/'run'/'scale_sweep.csv')
    assert list(zip(sw.classifier, sw.scale)) == [('none', 0.), ('noisy', 2.), ('DA', 2.)] and (sw.n == N).all()
    assert (sw.fid > 0).all() and sw.class_share.between(0, 1).all()
    for f in FIGS: assert (run/'run'/f'{f}.html').stat().st_size > 1000, f
    page = (run/'run'/'guidance.html').read_text()
    assert (run/'run'/'plotly.min.js').exists() and 'plotly.min.js' in page and page.count('class="plotly-graph-div"') == len(FIGS)
    provs = [json.loads(p.read_text()) for p in (run/'cache'/'guidance').glob('*/provenance.json')]
    assert sorted(p['params']['kind'] for p in provs) == ['da', 'noisy'] and all(p['params']['steps'] == 2 for p in provs)


def test_claims_are_computed_and_printed(run):
    m = json.loads((run/'run'/'metrics.json').read_text())
    claims = m['claims']
    assert len(claims) == 2 + 2 * 2 + 1                                 # Table 3, the ablation, FID and D/C per sampler, the sweep
    assert all(isinstance(c['holds'], bool) and isinstance(c['every_seed'], bool) for c in claims)
    assert all(' vs ' in c['evidence'] for c in claims[:-1])
    assert claims[-1]['claim'].startswith('Scale sweep') and 'class share' in claims[-1]['evidence'] and 'FID' in claims[-1]['evidence']
    rows = {f'{c} | {s}' for c in ('none', 'noisy', 'DA') for s in ('DDIM-3', 'DDPM-2')}
    assert set(m['table4']) == set(m['table4_std']) == rows and all(0 <= m['table4'][r]['class share↑'] <= 1 for r in rows)
    nb = json.loads((run/'run'/'notebook.ipynb').read_text())
    last = [c for c in nb['cells'] if c['cell_type'] == 'code'][-1]
    out = ''.join(''.join(o.get('text', '')) for o in last['outputs'])
    for c in claims: assert f"{'HOLDS' if c['holds'] else 'FAILS'} " in out and c['claim'] in out, c['claim']
