"""The `diffaug-nb` command as a user runs it: the quick commands through the installed console script (a subprocess),
the papermill steps through `cli.main` in this process (conftest's `cli_here`: the step's notebook still runs in a kernel)."""
import json, os, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE = shutil.which('diffaug-nb') or str(Path(sys.executable).parent/'diffaug-nb')
TINY = ['-p', 'model', 'embedded-weak', '-p', 'steps', '3', '-p', 'batch_size', '8', '-p', 'width', '8', '-p', 'n_quality', '50', '-p', 'device', 'cpu']

def run(*args, cwd=ROOT, env=None):
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})

def test_help_lists_commands():
    r = run('--help')
    assert r.returncode == 0
    for c in ('main', 'train-score-model', 'sweep', 'docs', 'settings'): assert c in r.stdout

def test_settings_env_override(tmp_path):
    r = run('settings', env=dict(DIFFAUG_RUNS_DIR=str(tmp_path/'r'), DIFFAUG_DEVICE='cpu'))
    assert r.returncode == 0 and f"runs_dir        {tmp_path/'r'}" in r.stdout and 'device          cpu' in r.stdout

def test_train_score_model_command(tmp_path, cli_here):
    "The score-model step end to end at a tiny size: a run folder with the executed notebook, Fig. 1 and the numbers."
    r = cli_here('train-score-model', *TINY, '-p', 'cache_dir', str(tmp_path/'cache'), '--run-dir', str(tmp_path/'run'))
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path/'run'/'score_model'
    for f in ('notebook.ipynb', 'parameters.json', 'provenance.json', 'status.json', 'quality.json', 'fig1_denoised.png'):
        assert (out/f).exists(), f
    assert json.loads((out/'parameters.json').read_text())['steps'] == 3
    assert 'accuracy t=300' in r.stdout and str(out/'fig1_denoised.png') in r.stdout
    (model_dir,) = [d for d in (tmp_path/'cache').iterdir() if not d.name.startswith('.')]   # (.lock files beside it)
    # the same parameters name the same folder, already trained: a second run reuses it (the notebook prints which)
    from diffaug_nb.scoremodel import embedded_model_dir, is_trained
    assert embedded_model_dir(tmp_path/'cache', 'embedded-weak', steps=3, batch_size=8, width=8) == model_dir and is_trained(model_dir)
    assert '(training now; resumable)' in (out/'notebook.ipynb').read_text()

def test_failing_step_says_where(tmp_path, cli_here):
    "A step that fails names the error and keeps the executed notebook for inspection."
    r = cli_here('train-score-model', *TINY, '-p', 'schedule', 'bogus', '-p', 'cache_dir', str(tmp_path/'c'), '--run-dir', str(tmp_path/'run'))
    assert r.returncode != 0
    assert "schedule must be 'linear' or 'cosine'" in r.stderr and 'score_model.failed' in r.stderr
    assert (tmp_path/'run'/'score_model.failed'/'notebook.ipynb').exists()

def test_sweep_bad_grid_fails_before_running(tmp_path):
    grid = tmp_path/'g.json'
    grid.write_text(json.dumps(dict(notebook=str(ROOT/'nbs/experiments/train_score_model.ipynb'),
                                    parameters=dict(stepz=[1, 2]))))
    r = run('sweep', str(grid), '--out-dir', str(tmp_path/'sw'))
    assert r.returncode == 2 and 'stepz' in r.stderr
    assert not any((tmp_path/'sw').glob('*/notebook.ipynb'))
