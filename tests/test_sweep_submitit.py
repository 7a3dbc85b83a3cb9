"""Sweeps as submitit jobs (`diffaug-nb sweep GRID --executor local`, submitit's local executor: the jobs a SLURM
sweep submits, run as processes here): a failing run is recorded, a job killed mid-way gets a failure record and
leaves no temp folder, and the sweep resumes (finished runs skipped, the others run again) with job ids in each
run's provenance. The kill is triggered by a file the job writes, never by a clock."""
import json, os, signal, threading, time
import nbformat, pytest, yaml
from diffaug_nb.sweep import run_sweep, sweep_cli, run_id, collect_results

PARAMS = "mode = 'ok'\nsignal_file = ''\nrun_dir = None"
BODY = """import json, os, pathlib, threading
assert mode != 'fail', 'asked to fail'
if mode == 'block' and not pathlib.Path(signal_file).exists():
    # tell the test who we are (this kernel and the job process that started it), then wait to be killed
    pathlib.Path(signal_file).write_text(f'{os.getpid()} {os.getppid()}')
    threading.Event().wait()
pathlib.Path(run_dir, 'metrics.json').write_text(json.dumps(dict(mode=mode)))
"""


@pytest.fixture
def nb(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(PARAMS, metadata=dict(tags=['parameters'])), nbformat.v4.new_code_cell(BODY)]
    nb.metadata['kernelspec'] = dict(name='python3', display_name='Python 3', language='python')
    nbformat.write(nb, tmp_path/'tiny.ipynb')
    return tmp_path/'tiny.ipynb'


def test_local_jobs_failure_kill_and_resume(nb, tmp_path):
    out, sig = tmp_path/'sweep', tmp_path/'blocked'
    grid = dict(mode=['ok', 'fail', 'block'])
    ids = {m: run_id(dict(mode=m, signal_file=str(sig))) for m in grid['mode']}
    res = {}
    sweep = threading.Thread(target=lambda: res.update(df=run_sweep(nb, grid, out_dir=out, fixed=dict(signal_file=str(sig)),
                                                                     executor='local', max_parallel=3, progress=False)))
    sweep.start()
    deadline = time.monotonic() + 300   # guards a broken job only; the kill waits for the job's own signal
    while not sig.exists() and sweep.is_alive() and time.monotonic() < deadline: time.sleep(0.05)
    assert sig.exists(), 'the blocking run never signalled'
    kernel, job = map(int, sig.read_text().split())
    assert (out/f".tmp-{ids['block']}-{job}").is_dir()   # the job's run is under way in its temp folder
    os.kill(job, signal.SIGKILL); os.kill(kernel, signal.SIGKILL)   # the job dies mid-run, as on a lost node
    sweep.join()
    df = res['df']
    assert df.attrs['counts'] == dict(ok=1, skipped=0, failed=2)
    st = dict(zip(df.run_id, df.status))
    assert st == {ids['ok']: 'ok', ids['fail']: 'failed', ids['block']: 'failed'}
    err = dict(zip(df.run_id, df.error))
    assert 'asked to fail' in err[ids['fail']] and 'ended without finishing the run' in err[ids['block']]
    killed = json.loads((out/f"{ids['block']}.failed"/'provenance.json').read_text())['job']
    assert killed['executor'] == 'local' and killed['id'] in err[ids['block']]
    assert not list(out.glob('.tmp-*'))   # the killed job's temp folder is gone
    first_ok_job = json.loads((out/ids['ok']/'provenance.json').read_text())['job']
    assert first_ok_job['executor'] == 'local' and first_ok_job['id'].isdigit()

    # resume from the command line: the finished run is skipped, the failed and the killed ones run again
    (tmp_path/'grid.yaml').write_text(yaml.safe_dump(dict(notebook='tiny.ipynb', parameters=grid, fixed=dict(signal_file=str(sig)),
                                                          executor='local')))
    assert sweep_cli([str(tmp_path/'grid.yaml'), '--out-dir', str(out), '--max-parallel', '2', '--quiet']) == 1   # 'fail' fails again
    df = collect_results(out)
    assert dict(zip(df.run_id, df.status)) == {ids['ok']: 'ok', ids['fail']: 'failed', ids['block']: 'ok'}
    assert json.loads((out/ids['ok']/'provenance.json').read_text())['job'] == first_ok_job   # not run again
    resumed = json.loads((out/ids['block']/'provenance.json').read_text())['job']
    assert resumed['id'] != killed['id'] and not (out/f"{ids['block']}.failed").exists()


def test_slurm_options_and_errors(nb, tmp_path):
    (tmp_path/'g.yaml').write_text(yaml.safe_dump(dict(notebook='tiny.ipynb', parameters=dict(mode=['ok']), executor='slurm',
                                                       slurm=dict(partition='gpu', gpus_per_node=1, time=60))))
    code = sweep_cli([str(tmp_path/'g.yaml'), '--out-dir', str(tmp_path/'s'), '--quiet'])
    assert code == 2 or os.system('which srun >/dev/null') == 0   # here there is no SLURM: a clear refusal, nothing run
    assert not (tmp_path/'s').exists() or not list((tmp_path/'s').glob('*/status.json'))
    (tmp_path/'bad.yaml').write_text(yaml.safe_dump(dict(notebook='tiny.ipynb', parameters=dict(mode=['ok']), executor='pbs')))
    assert sweep_cli([str(tmp_path/'bad.yaml'), '--quiet']) == 2
    (tmp_path/'bad2.yaml').write_text(yaml.safe_dump(dict(notebook='tiny.ipynb', parameters=dict(mode=['ok']), slurm=dict(gpus=2))))
    assert sweep_cli([str(tmp_path/'bad2.yaml'), '--quiet']) == 2
