"End-to-end run of nbs/experiments/adversarial.ipynb with papermill (through the sweep runner) at tiny sizes."
import json
from pathlib import Path
import pandas as pd, pytest
from diffaug_nb.sweep import run_notebook

NB = Path(__file__).resolve().parents[1]/'nbs'/'experiments'/'adversarial.ipynb'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('adv')
    params = dict(generators=['embedded-weak'], amounts=[0, 1], n_real=128, n_val=64, n_test=64, n_aa=32, seeds=[0, 1],
                  epochs=2, batch_size=64, train_steps=2, pgd_steps=5, aa_steps=3, aa_queries=20, sample_steps=3,
                  threshold=0.5, chunk_size=128, n_fid=64, cache_dir=str(tmp/'cache'), device='cpu')
    st = run_notebook(NB, params, tmp/'run')
    assert st['status'] == 'ok', st.get('traceback', st['error'])
    return tmp


def test_table_has_every_run_seed_and_epoch(run):
    df = pd.read_csv(run/'run'/'metrics.csv')
    got = sorted(zip(df.generator, df.amount, df.seed, df.epoch))
    want = sorted((g, a, s, e) for g, a in (('none', 0), ('embedded-weak', 1)) for s in (0, 1) for e in ('best', 'last'))
    assert got == want
    for c in ('clean', 'pgd40', 'autoattack'): assert df[c].dropna().between(0, 1).all(), c
    aa = df[df.autoattack.notna()]
    assert (df.pgd40 <= df.clean).all() and (aa.autoattack <= aa.clean_aa).all()   # AutoAttack runs on the first n_aa digits
    assert set(aa.index) == set(df.index[(df.epoch == 'last') | (df.epoch_n == 2)])  # aa_epochs: the last (a best epoch 2 is the last)
    assert set(df[df.epoch == 'last'].epoch_n) == {2} and df[df.epoch == 'best'].epoch_n.between(1, 2).all()
    md = (run/'run'/'table.md').read_text()
    assert 'embedded-weak x1 last' in md and 'none x0 best' in md and '±' in md
    assert len(list((run/'run'/'rows').glob('run-*.json'))) == 4      # one saved file per (generator, amount, seed): resumable
    assert (run/'run'/'accuracy_vs_amount.html').stat().st_size > 0


def test_generated_set_cached_with_provenance(run):
    g = json.loads((run/'run'/'generators.json').read_text())
    assert [x['generator'] for x in g] == ['embedded-weak'] and g[0]['fid'] > 0 and 0 <= g[0]['label_noise'] <= 1
    assert sum(g[0]['counts']) >= 128
    sets = list((run/'cache'/'generated').iterdir())
    assert len(sets) == 1 and (sets[0]/'chunk_00000.pt').exists()
    prov = json.loads((sets[0]/'provenance.json').read_text())
    assert prov['params']['steps'] == 3 and prov['params']['threshold'] == 0.5 and prov['params']['model'] == 'embedded-weak'
