"End-to-end run of nbs/experiments/sample_quality.ipynb with papermill (through the sweep runner) at tiny sizes."
import json
from pathlib import Path
import pandas as pd, pytest
from diffaug_nb.sweep import run_notebook
from diffaug_nb.quality import QUALITY_TARGETS

NB = Path(__file__).resolve().parents[1]/'nbs'/'experiments'/'sample_quality.ipynb'
CONFIGS = [['ddim', 4, 24], ['ddpm', 3, 16]]


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('sq')
    params = dict(model='embedded-weak', configs=CONFIGS, seeds=[0, 1], n_real=100, n_x0hat=200, batch_size=16, device='cpu')
    st = run_notebook(NB, params, tmp/'run')
    assert st['status'] == 'ok', st.get('traceback', st['error'])
    return tmp/'run'


def test_table_has_every_config_and_seed(run):
    df = pd.read_csv(run/'metrics.csv')
    assert sorted(zip(df.sampler, df.steps, df.seed)) == sorted((s, k, seed) for s, k, _ in CONFIGS for seed in (0, 1))
    assert (df.n == [n for _, _, n in CONFIGS for _ in (0, 1)]).all()
    assert ((0 <= df.confident) & (df.confident <= 1) & (df.fid > 0) & (df.fid_real > 0)).all()
    assert (df.fid_ratio == df.fid / df.fid_real).all()
    md = (run/'table.md').read_text()
    assert 'ddim-4' in md and 'ddpm-3' in md and '±' in md        # mean ± std over the two seeds


def test_targets_and_pictures(run):
    q = json.loads((run/'quality.json').read_text())
    assert set(q['targets']) == set(QUALITY_TARGETS)
    for k, v in q['targets'].items():
        assert isinstance(v['passed'], bool) and v['target'].endswith(str(QUALITY_TARGETS[k][0])), k
    assert 0 <= q['x0hat_accuracy']['t=500'] <= 1
    # every config is judged on its own seeds' mean (recomputed here from metrics.csv); `targets` is the first config's
    by = q['targets_by_config']
    assert list(by) == [f'{s}-{k}' for s, k, _ in CONFIGS] and by['ddim-4'] == q['targets']
    df = pd.read_csv(run/'metrics.csv')
    for s, k, _ in CONFIGS:
        mean = df[(df.sampler == s) & (df.steps == k)][['confident', 'fid_ratio']].mean()
        assert by[f'{s}-{k}']['confident']['value'] == pytest.approx(mean.confident)
        assert by[f'{s}-{k}']['fid_ratio']['value'] == pytest.approx(mean.fid_ratio)
        assert by[f'{s}-{k}']['x0hat_t500']['value'] == q['x0hat_accuracy']['t=500']
    assert by['ddim-4']['fid_ratio']['value'] != by['ddpm-3']['fid_ratio']['value']
    b = q['bayes_accuracy_xt']      # the ceiling of one-step accuracy: the Bayes classifier of x_t, exact on the train digits
    assert 0 < b['test'] < b['train'] < QUALITY_TARGETS['x0hat_t500'][0], b
    for f in ('samples_ddim-4.png', 'samples_ddpm-3.png', 'nearest_train.png'):
        assert (run/f).stat().st_size > 1000, f
