"End-to-end run of nbs/experiments/report.ipynb with papermill at tiny sizes: every section, one page, traceable numbers."
import json
from html.parser import HTMLParser
from pathlib import Path
import pandas as pd, pytest, torch
from diffaug_nb.diffusion import Denoiser, tiny_unet, vp_scheduler
from diffaug_nb.sweep import run_notebook

NB = Path(__file__).resolve().parents[1]/'nbs'/'experiments'/'report.ipynb'
POLICIES = ['baseline', 'diffaug']


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('report')
    torch.manual_seed(0)
    Denoiser(tiny_unet(28, 1, 8), vp_scheduler()).save_pretrained(tmp/'model')   # untrained: fast, exercises the code
    params = dict(model=str(tmp/'model'), policies=POLICIES, seeds=[0, 1], epochs=1, cache_dir=str(tmp/'cache'), device='cpu',
                  robustness=dict(modes=['default', 'de'], corruptions=['gaussian_noise', 'fog'], n_clean=30, n_per_corruption=6,
                                  n_entropy=8, entropy_ts=[0, 500], ablation=False, png=False),
                  n_ood=40, ood_de_ts=[0, 250], ood_detectors=['msp', 'energy', 'react'], certify_sigmas=[0.25, 0.5], n_certify=3,
                  certify_n0=8, certify_n=40, n_grad=2, batch_size=64)
    st = run_notebook(NB, params, tmp/'run')
    assert st['status'] == 'ok', st.get('traceback', st['error'])
    return tmp/'run'


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(); self.h2, self.tables, self.hrefs, self.scripts = [], 0, [], []
        self._in_h2 = False
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'h2': self._in_h2 = True; self.h2.append('')
        if tag == 'table': self.tables += 1
        if tag == 'a' and a.get('href'): self.hrefs.append(a['href'])
        if tag == 'script' and a.get('src'): self.scripts.append(a['src'])
    def handle_endtag(self, tag):
        if tag == 'h2': self._in_h2 = False
    def handle_data(self, d):
        if self._in_h2: self.h2[-1] += d


def test_every_section_on_one_offline_page(run):
    p = _Page(); p.feed((run/'report.html').read_text())
    assert p.h2 == ['Covariate shift: Table 1 and Fig. 2', 'OOD detection: Table 2', 'Certified accuracy: Table 8', 'Gradients: Fig. 3']
    assert p.tables == 1 + 2 + 2 and p.scripts == ['plotly.min.js'] and (run/'plotly.min.js').exists()
    assert 'covariate_shift' in p.hrefs          # Table 1 links to the robustness run it came from


def test_numbers_trace_to_their_runs(run):
    m = json.loads((run/'metrics.json').read_text())
    rob = run/m['covariate_shift']['source']           # sources are relative to the run folder
    assert rob == run/'covariate_shift' and (rob/'notebook.ipynb').exists() and (run/m['ood']['source']).exists()
    assert m['covariate_shift']['table1'] == json.loads((rob/'metrics.json').read_text())['table1']
    # the report's classifiers are the robustness run's own (trained once, shared): the same cache folders
    rob_clf = {f"{c['seed']}|{c['policy']}": c['path'] for c in json.loads((rob/'metrics.json').read_text())['classifiers']}
    assert m['classifiers'] == rob_clf
    assert set(m['ood_classifiers']) == set(rob_clf) and not set(m['ood_classifiers'].values()) & set(rob_clf.values())


def test_ood_and_certified_tables(run):
    ood = pd.read_csv(run/'ood_long.csv')
    assert set(ood.policy) == set(POLICIES) and set(ood.seed) == {0, 1} and set(ood['mode']) == {'default', 'de'}
    assert set(ood.detector) == {'msp', 'energy', 'react'} and {'near', 'far'} <= set(ood.ood)
    assert ood.auroc.between(0, 1).all() and ood.fpr95.between(0, 1).all()
    # Table 2 is the mean over seeds of the long rows
    t2 = pd.read_csv(run/'table2_auroc.csv', header=[0, 1], index_col=[0, 1])
    want = ood[(ood['mode'] == 'default') & (ood.policy == 'diffaug') & (ood.ood == 'near') & (ood.detector == 'msp')].auroc.mean() * 100
    assert t2.loc[('default', 'diffaug'), ('near', 'msp')] == pytest.approx(want)
    cert = pd.read_csv(run/'certified_long.csv')
    assert set(cert.model) == set(POLICIES) and {str(s) for s in cert.sigma} == {'0.25', '0.5', 'best'}
    # certified accuracy never rises with the radius, and 'best' is the envelope of the sigmas
    for (mdl, sig, sd), g in cert.groupby(['model', 'sigma', 'seed']):
        assert g.sort_values('radius').value.is_monotonic_decreasing, (mdl, sig, sd)
    w = cert.pivot_table(index=['model', 'seed', 'radius'], columns='sigma', values='value')
    assert (w['best'] >= w.drop(columns='best').max(axis=1) - 1e-9).all()
    cost = pd.read_csv(run/'certify_cost.csv')
    assert (cost.draws_per_image == 8 + 40).all() and len(cost) == 2 * 2
