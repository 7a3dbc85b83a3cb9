"Tests of the papermill sweep runner (diffaug_nb.sweep) on a tiny notebook written into tmp_path."
import json, os, subprocess, sys
from pathlib import Path
import nbformat, pandas as pd, pytest, yaml
from diffaug_nb.sweep import (expand_grid, run_id, validate_grid, run_notebook, run_status, run_sweep,
                              run_sweep_file, collect_results, load_grid, sweep_cli, kernel_python, aggregate)

PARAMS = "a = 1\nb = 0.5\nfail = False\ncounter = ''\nsquat = ''\ntags = ['x']\nrun_dir = None"
BODY = """import json, pathlib, sys, os
if counter: open(counter, 'a').write(f'{a},{b},{fail}\\n')
if squat:   # play another process finishing this very run while we run
    pathlib.Path(squat).mkdir(parents=True, exist_ok=True); pathlib.Path(squat, 'marker').write_text('theirs')
assert not fail, 'asked to fail'
print('product', a * b)
pathlib.Path(run_dir, 'metrics.json').write_text(json.dumps(dict(product=a * b, python=sys.executable,
    acc=dict(clean=a / 10, corrupt=b / 10), hist=[a, b], ntags=len(tags))))
"""


def write_nb(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell('# tiny'),
                nbformat.v4.new_code_cell(PARAMS, metadata=dict(tags=['parameters'])),
                nbformat.v4.new_code_cell(BODY)]
    nb.metadata['kernelspec'] = dict(name='python3', display_name='Python 3', language='python')
    nbformat.write(nb, path)
    return Path(path)


@pytest.fixture
def nb(tmp_path): return write_nb(tmp_path/'tiny.ipynb')


def lines(p): return Path(p).read_text().splitlines() if Path(p).exists() else []


def test_expand_grid():
    runs = expand_grid(dict(a=[1, 2, 3], b=[0.1, 0.2]), dict(tags=['y']))
    assert len(runs) == 6
    assert {(r['a'], r['b']) for r in runs} == {(a, b) for a in (1, 2, 3) for b in (0.1, 0.2)}
    assert all(r['tags'] == ['y'] for r in runs)
    assert len({run_id(r) for r in runs}) == 6                      # distinct folders
    assert run_id(dict(a=1, b=2)) == run_id(dict(b=2, a=1))          # id independent of key order
    assert expand_grid({}, dict(a=1)) == [dict(a=1)]
    with pytest.raises(TypeError, match="'a'"): expand_grid(dict(a=1))
    with pytest.raises(ValueError, match="'a'"): expand_grid(dict(a=[]))


def test_bad_grid_fails_before_running(nb, tmp_path):
    out, counter = tmp_path/'out', tmp_path/'count.txt'
    with pytest.raises(ValueError, match="unknown parameter 'lr'"):
        run_sweep(nb, dict(a=[1, 2], lr=[0.1]), out_dir=out, fixed=dict(counter=str(counter)), progress=False)
    with pytest.raises(ValueError, match="parameter 'a'.*'two'"):   # the good run (a=1) must not run either
        run_sweep(nb, dict(a=[1, 'two']), out_dir=out, fixed=dict(counter=str(counter)), progress=False)
    with pytest.raises(ValueError, match="parameter 'fail'"):
        run_sweep(nb, dict(fail=[0, 1]), out_dir=out, progress=False)
    with pytest.raises(ValueError, match="parameter 'tags'"):
        run_sweep(nb, dict(tags=['y']), out_dir=out, progress=False)    # a str where the default is a list
    with pytest.raises(ValueError, match="'run_dir'.*set by the sweep runner"):
        run_sweep(nb, dict(run_dir=['/tmp/x']), out_dir=out, progress=False)
    validate_grid(nb, expand_grid(dict(b=[1, 2.5], tags=[['p', 'q'], ('r',)])))   # int for float, tuple for list: fine
    assert not counter.exists() and not (out.exists() and any(out.iterdir()))


def test_failure_recorded_and_sweep_continues_then_resume(nb, tmp_path):
    out, counter = tmp_path/'out', tmp_path/'count.txt'
    (out/'.tmp-killed-999999999').mkdir(parents=True)               # left by a killed sweep: cleaned up
    grid = dict(fail=[True, False], a=[2])
    df = run_sweep(nb, grid, out_dir=out, fixed=dict(counter=str(counter)), progress=False)
    assert df.attrs['counts'] == dict(ok=1, skipped=0, failed=1)
    assert len(lines(counter)) == 2                                    # the run after the failure ran
    bad, good = (run_id(dict(counter=str(counter), fail=f, a=2)) for f in (True, False))
    assert run_status(out/bad) == 'failed' and not (out/bad).exists()
    st = json.loads((out/f'{bad}.failed'/'status.json').read_text())
    assert st['status'] == 'failed' and 'AssertionError: asked to fail' in st['error'] and 'traceback' in st
    assert (out/f'{bad}.failed'/'notebook.ipynb').exists()             # the executed notebook with the error
    assert json.loads((out/good/'status.json').read_text())['status'] == 'ok'
    for f in ('notebook.ipynb', 'parameters.json', 'metrics.json', 'provenance.json', 'stdout.log', 'stderr.log'):
        assert (out/good/f).exists(), f
    assert (out/good/'stdout.log').read_text().strip() == 'product 1.0'
    assert json.loads((out/good/'parameters.json').read_text()) == dict(counter=str(counter), fail=False, a=2)
    prov = json.loads((out/good/'provenance.json').read_text())
    assert prov['versions']['papermill'] and prov['host']['name'] and prov['started'] <= prov['finished']
    assert not list(out.glob('.tmp-*'))
    # resume without retrying failures: nothing runs, the finished notebook is untouched
    mtime = (out/good/'notebook.ipynb').stat().st_mtime_ns
    df2 = run_sweep(nb, grid, out_dir=out, fixed=dict(counter=str(counter)), progress=False, retry_failed=False)
    assert df2.attrs['counts'] == dict(ok=0, skipped=2, failed=0) and len(lines(counter)) == 2
    assert (out/good/'notebook.ipynb').stat().st_mtime_ns == mtime
    # resume retrying failures: only the failed run runs again (and fails again)
    df3 = run_sweep(nb, grid, out_dir=out, fixed=dict(counter=str(counter)), progress=False)
    assert df3.attrs['counts'] == dict(ok=0, skipped=1, failed=1)
    assert lines(counter) == ['2,0.5,True', '2,0.5,False', '2,0.5,True']
    # a grown grid runs only the new point
    df4 = run_sweep(nb, dict(fail=[True, False], a=[2, 3]), out_dir=out, fixed=dict(counter=str(counter)),
                    progress=False, retry_failed=False)
    assert df4.attrs['counts'] == dict(ok=1, skipped=2, failed=1)    # a=3,fail=True fails, a=3,fail=False is new
    assert len(lines(counter)) == 5 and len(df4) == 4


def test_finished_run_never_overwritten(nb, tmp_path):
    out = tmp_path/'out'
    st = run_notebook(nb, dict(a=4), out/'r1')
    assert st['status'] == 'ok'
    before = (out/'r1'/'metrics.json').read_text()
    with pytest.raises(FileExistsError):
        run_notebook(nb, dict(a=5), out/'r1')
    assert (out/'r1'/'metrics.json').read_text() == before
    # someone else finishes the same run while ours executes: theirs stays, ours is kept aside as a conflict
    p = dict(a=6, squat=str(out/'r2'))
    st = run_notebook(nb, p, out/'r2')
    assert st['status'] == 'conflict'
    assert (out/'r2'/'marker').read_text() == 'theirs' and not (out/'r2'/'metrics.json').exists()
    dup = out/f'r2.dup-{os.getpid()}'
    assert json.loads((dup/'metrics.json').read_text())['product'] == 3.0


def test_results_table_and_grid_file(nb, tmp_path):
    out = tmp_path/'sweep'
    (tmp_path/'grid.yaml').write_text(yaml.safe_dump(dict(
        notebook='tiny.ipynb', name='demo', parameters=dict(a=[1, 3], fail=[False, True]),
        fixed=dict(b=2.0, tags=['p', 'q', 'r']))))
    spec = load_grid(tmp_path/'grid.yaml')
    assert spec['notebook'] == nb.resolve() and spec['name'] == 'demo'
    df = run_sweep_file(tmp_path/'grid.yaml', out_dir=out, progress=False)
    assert len(df) == 4 and sorted(df.status) == ['failed', 'failed', 'ok', 'ok']
    ok = df[df.status == 'ok'].set_index('a')
    assert ok.loc[1, 'product'] == 2.0 and ok.loc[3, 'product'] == 6.0
    assert ok.loc[3, 'acc.clean'] == pytest.approx(0.3) and ok.loc[3, 'acc.corrupt'] == pytest.approx(0.2)
    assert json.loads(ok.loc[3, 'hist']) == [3, 2.0] and ok.loc[3, 'ntags'] == 3
    assert (ok.duration_s > 0).all() and ok.error.isna().all()
    assert df[df.status == 'failed'].error.str.contains('asked to fail').all()
    assert df[df.status == 'failed']['product'].isna().all()
    assert set(df.run_id) == {run_id(dict(b=2.0, tags=['p', 'q', 'r'], a=a, fail=f)) for a in (1, 3) for f in (False, True)}
    csv = pd.read_csv(out/'results.csv')
    assert len(csv) == 4 and list(csv.columns) == list(df.columns)
    pd.testing.assert_frame_equal(collect_results(out).sort_values('run_id').reset_index(drop=True),
                                  df.sort_values('run_id').reset_index(drop=True))
    assert df.attrs['param_columns'] == ['b', 'tags', 'a', 'fail']
    agg = aggregate(df, 'a')                                            # mean over a of the finished runs (fail=False)
    assert len(agg) == 1 and agg.loc[0, ('product', 'mean')] == 4.0 and agg.loc[0, ('product', 'count')] == 2
    assert agg.loc[0, ('product', 'std')] == pytest.approx(2 ** 1.5)
    sw = json.loads((out/'sweep.json').read_text())
    assert sw['name'] == 'demo' and len(sw['runs']) == 4
    # the command line: the same grid is finished except the failures (exit 1), dry run, bad grid (exit 2)
    assert sweep_cli([str(tmp_path/'grid.yaml'), '--out-dir', str(out), '--quiet', '--no-retry-failed']) == 1
    assert sweep_cli([str(tmp_path/'grid.yaml'), '--out-dir', str(tmp_path/'dry'), '--dry-run']) == 0
    assert not (tmp_path/'dry').exists()
    (tmp_path/'bad.json').write_text(json.dumps(dict(notebook='tiny.ipynb', parameters=dict(nope=[1]))))
    assert sweep_cli([str(tmp_path/'bad.json'), '--out-dir', str(tmp_path/'bad')]) == 2


def test_kernel_is_this_venv(nb, tmp_path):
    "The kernel runs this interpreter even when the venv is not on PATH (jupyter_client maps `python` to sys.executable)."
    assert Path(kernel_python('python3')).resolve() == Path(sys.executable).resolve()
    code = (f"from diffaug_nb.sweep import run_notebook; import sys; "
            f"sys.exit(run_notebook({str(nb)!r}, dict(a=1), {str(tmp_path/'r')!r})['status'] != 'ok')")
    env = {k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'PYTHONHOME')}
    env['PATH'] = '/usr/bin:/bin'
    subprocess.run([sys.executable, '-c', code], env=env, check=True, timeout=120)
    py = json.loads((tmp_path/'r'/'metrics.json').read_text())['python']
    assert Path(py).resolve() == Path(sys.executable).resolve()
