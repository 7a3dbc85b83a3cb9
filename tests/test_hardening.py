"Bad input, faults and concurrency as a new user meets them (issue 13): refused early, by name, with the fix."
import os, subprocess, sys, shutil
from pathlib import Path
import pytest, torch

ROOT = Path(__file__).resolve().parent.parent
EXE = shutil.which('diffaug-nb') or str(Path(sys.executable).parent/'diffaug-nb')

def cli(*args, env=None, cwd=ROOT):
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})

# --- 1.1 non-finite images -------------------------------------------------------------------------------
def test_nan_image_refused_by_predict_de():
    from diffaug_nb.diffusion import EmpiricalDenoiser, vp_scheduler
    from diffaug_nb.evaluate import predict_de
    den = EmpiricalDenoiser(torch.rand(5, 1, 4, 4) * 2 - 1, vp_scheduler())
    x = torch.rand(3, 1, 4, 4); x[2, 0, 1, 1] = float('nan')
    with pytest.raises(ValueError, match=r'NaN or infinite, in image\(s\) \[2\]'):
        predict_de(lambda z: z.flatten(1)[:, :3], den, x, ts=[0, 50], device='cpu', progress=False)

# --- 1.2 / 1.3 the CLI checks every -p before anything runs ------------------------------------------------
def test_cli_refuses_unknown_and_unused_params(tmp_path, cli_here):
    r = cli_here('train-score-model', '-p', 'seed', '7', '-p', 'bogus', '1', '--run-dir', str(tmp_path/'run'))
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "'seed'" in r.stderr and "'bogus'" in r.stderr and 'not used' in r.stderr
    assert not (tmp_path/'run').exists(), "nothing may run before the parameters are checked"

def test_cli_main_checks_robustness_params_first(tmp_path, cli_here):
    "A bad robustness parameter is refused before the score-model step, not minutes later."
    r = cli_here('main', '-p', 'epochs', "'three'", '--run-dir', str(tmp_path/'run'))
    assert r.returncode == 2 and "'epochs'" in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path/'run').exists()

def test_cli_refuses_zero_steps(tmp_path, cli_here):
    r = cli_here('train-score-model', '-p', 'steps', '0', '-p', 'cache_dir', str(tmp_path/'c'), '--run-dir', str(tmp_path/'run'))
    assert r.returncode == 2 and 'steps must be >= 1' in r.stderr, r.stderr[-2000:]
    assert not (tmp_path/'c').exists() and not (tmp_path/'run').exists()

# --- 1.4 the device setting decides unless a call says otherwise -------------------------------------------
def _functions_with_device():
    import importlib, inspect, pkgutil, diffaug_nb
    for m in pkgutil.iter_modules(diffaug_nb.__path__):
        if m.name.startswith('_') or m.name in ('docs',): continue
        mod = importlib.import_module(f'diffaug_nb.{m.name}')
        for name, obj in vars(mod).items():
            if getattr(obj, '__module__', None) != mod.__name__: continue
            fns = [(name, obj)] if inspect.isfunction(obj) else \
                  [(f'{name}.{k}', v.__func__ if isinstance(v, classmethod) else v) for k, v in vars(obj).items()
                   if inspect.isfunction(v) or isinstance(v, classmethod)] if inspect.isclass(obj) else []
            for n, f in fns:
                ps = inspect.signature(f).parameters
                if 'device' in ps and ps['device'].default is not inspect.Parameter.empty: yield f'{m.name}.{n}', ps['device'].default

def test_every_device_default_reads_the_setting():
    found = dict(_functions_with_device())
    assert len(found) > 10, found
    placement = {'evaluate.image_noise'}   # where a noise tensor is put (callers pass their device), not a compute device
    bad = {k: v for k, v in found.items() if v is not None and k not in placement}
    assert not bad, f"these default to a device instead of None (the setting): {bad}"

def _parameterised_notebooks():
    "Every notebook under nbs/ with a cell tagged `parameters` (the experiments, the explorer)."
    import nbformat
    for nb in sorted((ROOT/'nbs').rglob('*.ipynb')):
        if any('parameters' in c.get('metadata', {}).get('tags', []) for c in nbformat.read(str(nb), as_version=4).cells): yield nb

def test_notebook_device_parameters_read_the_setting():
    "A `parameters` cell leaves the device to the setting (None), as the modules' defaults do."
    from diffaug_nb.sweep import notebook_parameters
    nbs = list(_parameterised_notebooks())
    assert {'robustness.ipynb', 'train_score_model.ipynb'} <= {nb.name for nb in nbs}, nbs
    found = {f'{nb.relative_to(ROOT)}: {k}': v for nb in nbs for k, v in notebook_parameters(nb).items() if 'device' in k}
    assert 'nbs/experiments/robustness.ipynb: device' in found, found
    bad = {k: v for k, v in found.items() if v is not None}
    assert not bad, f"these parameters cells default to a device instead of None (the setting): {bad}"

def test_device_setting_is_used_and_checked(monkeypatch):
    from diffaug_nb.scoremodel import train_score_model
    monkeypatch.setenv('DIFFAUG_DEVICE', 'tpu')
    with pytest.raises(ValueError, match="DIFFAUG_DEVICE='tpu' is not a device"):
        train_score_model(torch.rand(4, 1, 8, 8), '/nonexistent/never-written', steps=1, progress=False)

def test_cli_refuses_bad_device_setting(tmp_path, cli_here):
    r = cli_here('train-score-model', '--run-dir', str(tmp_path/'run'), env=dict(DIFFAUG_DEVICE='CPU'))
    assert r.returncode == 2 and "DIFFAUG_DEVICE='CPU'" in r.stderr and "use 'cpu'" in r.stderr, r.stderr[-2000:]

# --- 1.5 settings: a named file must exist ------------------------------------------------------------------
def test_missing_settings_file_is_refused(tmp_path):
    r = cli('settings', env=dict(DIFFAUG_SETTINGS=str(tmp_path/'moved.ini')))
    assert r.returncode != 0 and 'DIFFAUG_SETTINGS' in r.stderr and 'moved.ini' in r.stderr

# --- 1.6 concurrency: one trainer per score model, one runner per sweep run ----------------------------------
_WAIT_AND_LOAD = """
import sys, time, pathlib
import diffaug_nb.scoremodel as sm
n, orig = [0], sm.train_score_model
def counting(*a, **k): n[0] += 1; return orig(*a, **k)
sm.train_score_model = counting
ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
ready.write_text('ready')
while not go.exists(): time.sleep(0.01)      # both processes start loading at once
sm.load_embedded(device='cpu', progress=False, cache_dir=sys.argv[3], name='embedded-weak', steps=40, batch_size=8, width=8)
print('TRAINED', n[0])
"""

def test_two_processes_train_one_score_model_once(tmp_path):
    go = tmp_path/'go'
    ps = [subprocess.Popen([sys.executable, '-c', _WAIT_AND_LOAD, str(tmp_path/f'ready{i}'), str(go), str(tmp_path/'cache')],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    while not all((tmp_path/f'ready{i}').exists() for i in range(2)):
        assert all(p.poll() is None for p in ps), [p.communicate() for p in ps]
    go.write_text('go')
    outs = [p.communicate(timeout=600) for p in ps]
    assert all(p.returncode == 0 for p in ps), [e[-2000:] for _, e in outs]
    trained = sorted(int(o.split('TRAINED')[-1]) for o, _ in outs)
    assert trained == [0, 1], f"the model was trained {sum(trained)} times"

def test_two_sweeps_on_one_folder_run_each_run_once(tmp_path):
    import json
    from test_sweep import write_nb
    nb, counter = write_nb(tmp_path/'tiny.ipynb'), tmp_path/'count.txt'
    grid = tmp_path/'g.json'
    grid.write_text(json.dumps(dict(notebook=str(nb), parameters=dict(a=[1, 2, 3]), fixed=dict(counter=str(counter)))))
    ps = [subprocess.Popen([EXE, 'sweep', str(grid), '--out-dir', str(tmp_path/'sw'), '--quiet'], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in ps]
    assert [p.returncode for p in ps] == [0, 0], outs
    assert sorted(counter.read_text().splitlines()) == ['1,0.5,False', '2,0.5,False', '3,0.5,False']
    assert all('0 failed now' in o for o, _ in outs), outs

# --- run.sh installs chromium in one place, as root and as a user ----------------------------------------------
def _run_sh_functions(names:list, body:str, env:dict|None=None):
    "Run `body` in bash (strict mode) after the definitions of run.sh's functions `names`; it must succeed."
    lines, fn = (ROOT/'run.sh').read_text().splitlines(), []
    for n in names:   # a one-line function, or the lines up to its closing `}`
        i = next(i for i, l in enumerate(lines) if l.startswith(f'{n}() {{'))
        j = i if lines[i].rstrip().endswith('}') else lines.index('}', i)
        fn += lines[i:j + 1]
    fn = '\n'.join(fn)
    r = subprocess.run(['/bin/bash', '-c', f'set -euo pipefail\n{fn}\n{body}'], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r

def _browser_deps(tmp_path, uid:int, with_sudo:bool=True):
    "Run run.sh's `browser_deps` with fake apt-get/id/sudo on PATH; return the apt-get calls it made."
    bin_, log = tmp_path/'bin', tmp_path/'calls.log'
    bin_.mkdir(exist_ok=True)
    (bin_/'apt-get').write_text(f'#!/bin/sh\necho "$(id -u) DEBIAN_FRONTEND=$DEBIAN_FRONTEND apt-get $*" >> {log}\n')
    (bin_/'id').write_text(f'#!/bin/sh\n[ "$1" = -u ] && echo {uid} && exit 0\nexec /usr/bin/id "$@"\n')
    if with_sudo: (bin_/'sudo').write_text('#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n')
    for f in bin_.iterdir(): f.chmod(0o755)
    path = f'{bin_}:/usr/bin:/bin' if with_sudo else f'{bin_}:{tmp_path/"nosudo"}'
    if not with_sudo:   # a PATH with the basic tools but no sudo
        (tmp_path/'nosudo').mkdir()
        for t in ('sh', 'env', 'cat', 'sed', 'date'): (tmp_path/'nosudo'/t).symlink_to(shutil.which(t))
    r = _run_sh_functions(['say', 'browser_deps'], 'start=0\nbrowser_deps',
                          env=dict(PATH=path, DIFFAUG_CHROMIUM=str(tmp_path/'no-chromium')))
    return (log.read_text().splitlines() if log.exists() else []), r.stdout + r.stderr

@pytest.mark.parametrize('uid', [0, 1000])
def test_run_sh_installs_chromium_as_root_and_as_user(tmp_path, uid):
    calls, out = _browser_deps(tmp_path, uid)
    assert [c.split(' ', 1)[1] for c in calls] == ['DEBIAN_FRONTEND=noninteractive apt-get update -qq',
                                                  'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium'], (calls, out)

def test_run_sh_without_root_or_sudo_says_why(tmp_path):
    calls, out = _browser_deps(tmp_path, 1000, with_sudo=False)
    assert calls == [] and 'not root and no sudo' in out

# --- run.sh installs the dependencies with uv, from pip's own configuration, and with pip where uv fails ----------
def _install_deps(tmp_path, uv_ok:bool):
    "Run run.sh's `install_deps` with a fake venv (python, uv) that logs its calls; return them."
    venv, log = tmp_path/'venv', tmp_path/'calls.log'
    (venv/'bin').mkdir(parents=True); (tmp_path/'idx').mkdir()
    cfg = (f":env:.extra-index-url='file://{tmp_path}/idx file:///no/such/simple'\n"
           f"global.find-links='{tmp_path}'\nglobal.constraint='/no/such/constraints.txt'\n"
           "global.cert='/etc/ssl/certs/ca-certificates.crt'\n")
    (venv/'bin'/'python').write_text(f'#!/bin/sh\nif [ "$3" = config ]; then printf "%s" "{cfg}"; exit 0; fi\n'
                                     f'echo "python $*" >> {log}\n')
    (venv/'bin'/'uv').write_text(f'#!/bin/sh\necho "uv $*" >> {log}\nexit {0 if uv_ok else 1}\n')
    for f in (venv/'bin').iterdir(): f.chmod(0o755)
    r = _run_sh_functions(['uv_opts', 'pip_q', 'install_deps'], f'VENV={venv}\ninstall_deps')
    return log.read_text().replace(str(venv/'bin') + '/', '').splitlines(), r.stdout

def test_run_sh_installs_with_uv_from_pips_config(tmp_path):
    calls, _ = _install_deps(tmp_path, uv_ok=True)
    opts = (f'--index-strategy unsafe-best-match --no-cache --extra-index-url file://{tmp_path}/idx --find-links {tmp_path}')
    assert calls == ['python -m pip install -q uv',
                     f'uv pip install -q --python python {opts} -e .[dev]',
                     f'uv pip install -q --python python {opts} --no-deps torchattacks>=3.5'], calls

def test_run_sh_installs_with_pip_where_uv_fails(tmp_path):
    calls, out = _install_deps(tmp_path, uv_ok=False)
    assert calls[-2:] == ['python -m pip install -q --no-compile -e .[dev]',
                          'python -m pip install -q --no-compile --no-deps torchattacks>=3.5'], calls
    assert 'installing with uv failed' in out

# --- docs: processing a notebook leaves the process's working directory and environment as they were ----------
def test_proc_docs_nb_keeps_process_state(tmp_path, monkeypatch):
    import nbformat
    from diffaug_nb.docs_nbs import proc_docs_nb
    for k in ('IN_TEST', 'PLOTLY_RENDERER', 'MPLBACKEND'): monkeypatch.delenv(k, raising=False)
    (tmp_path/'sub').mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# Page'),
                                                   nbformat.v4.new_code_cell('import os; here = os.getcwd()')]),
                   tmp_path/'sub'/'page.ipynb')
    cwd, env = os.getcwd(), dict(os.environ)
    assert proc_docs_nb(tmp_path/'sub'/'page.ipynb', tmp_path/'out.ipynb', execute=True) is None
    assert os.getcwd() == cwd and dict(os.environ) == env
