"""Multi-process training with accelerate, here with 2 CPU processes (gloo): a run killed mid-way under 2 processes
resumes from its checkpoint, and the 2-process runs end with the weights of one process at the same global batch,
up to float32 summation order. (One test, two launches: each launch costs ~9 s of process start-up here.)"""
import subprocess, sys, time
from pathlib import Path
import psutil, pytest, torch, torch.nn as nn
from diffaug_nb.data import load_mnist5k
from diffaug_nb.diffusion import EmpiricalDenoiser, vp_scheduler, to_model
from diffaug_nb.augment import DiffAug
from diffaug_nb.train import Classifier, fit_classifier
from diffaug_nb.scoremodel import train_score_model, is_trained
from diffaug_nb.distributed import launch, write_job, launch_command, launch_env, kill_job

sys.path.insert(0, str(Path(__file__).parent))
from _dist_jobs import BlockAt, resume_then_fit  # noqa: E402  (the processes import them by name from this folder)

TESTS = str(Path(__file__).parent)
# Tolerances (max |w_1 - w_2| over all weights). The 2 processes' float32 gradients are averaged in another order than
# one process's batch mean, so the weights agree to rounding: measured ~1.5e-8 for the classifier (4 AdamW steps,
# lr 3e-3). Adam moves a weight by about lr * sign(gradient) while its second moment is small, so a weight whose
# gradient is zero but for rounding (the attention key bias of the UNet) can move by rounding noise times lr/eps:
# measured ~6e-6 for the score model (5 steps, lr 1e-3), bounded by 1e-4 = lr/10.
TOL_CLASSIFIER, TOL_SCORE = 1e-6, 1e-4


def _mlp():
    "A classifier without BatchNorm: torch's SyncBatchNorm is GPU-only, so CPU processes would normalise over their own share."
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU()), nn.Linear(32, 10), arch='mlp')


def _max_diff(a:dict, b:dict)->float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _wait_for(path:Path, proc:subprocess.Popen, log:Path):
    "Wait until the job writes `path` (its signal); fail if it ends first. The deadline only guards against a broken job."
    deadline = time.monotonic() + 300
    while not path.exists():
        if proc.poll() is not None: pytest.fail(f"the job ended (exit {proc.returncode}) before its signal:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline: pytest.fail(f"no signal from the job:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def test_two_processes_resume_after_a_kill_and_match_one_process(tmp_path):
    xs, ys = load_mnist5k('train').tensors
    # the score model: 5 steps at global batch 8, a checkpoint every 2 steps; killed under 2 processes after step 3
    score = dict(x=xs[:64], steps=5, batch_size=8, width=16, ckpt_every=2, seed=0, progress=False, device='cpu')
    out, sig, log = tmp_path/'two', tmp_path/'blocked', tmp_path/'launch.log'
    job = write_job(train_score_model, dict(out_dir=out, callback=BlockAt(3, sig), **score), tmp_path/'job')
    with open(log, 'w') as f:
        proc = subprocess.Popen(launch_command(job, 2, device='cpu'), env=launch_env({'PYTHONPATH': TESTS}),
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try: _wait_for(sig, proc, log)   # step 3 is done, so the checkpoint of step 2 is on disk
    finally: pids = kill_job(proc)   # the launcher and its workers (torchrun puts each in a session of its own)
    assert len(pids) >= 3 and not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    st = torch.load(out/'checkpoints'/'last.pt', weights_only=False)
    assert st['step'] == 2 and not is_trained(out)

    # the classifier: one epoch of 4 global batches of 32 (cutout + DiffAug on the exact empirical denoiser)
    da = DiffAug(EmpiricalDenoiser(to_model(xs[:64]), vp_scheduler()), t_min=50, t_max=300)
    clf = dict(x=xs[:128], y=ys[:128], policy='cutout', diffaug=da, epochs=1, batch_size=32, seed=0, progress=False, device='cpu',
               x_val=xs[-64:], y_val=ys[-64:])
    torch.manual_seed(0); m2 = _mlp()
    h2 = launch(resume_then_fit, dict(score=dict(out_dir=out, **score), classifier=dict(model=m2, out_dir=tmp_path/'clf', **clf)),
                num_processes=2, device='cpu', env={'PYTHONPATH': TESTS})

    # the same two runs in this one process, uninterrupted
    train_score_model(out_dir=tmp_path/'one', **score)
    torch.manual_seed(0); m1 = _mlp()
    h1 = fit_classifier(m1, **clf)

    st, ref = (torch.load(p/'checkpoints'/'last.pt', weights_only=False) for p in (out, tmp_path/'one'))
    assert st['step'] == 5 and len(st['losses']) == 5 and is_trained(out)
    ema = lambda s: dict(enumerate(s['ema']['shadow_params']))
    d = max(_max_diff(ref['unet'], st['unet']), _max_diff(ema(ref), ema(st)))
    print(f'score model: max |w(1 process) - w(2 processes, killed after step 3, resumed from 2)| = {d:.1e} (tolerance {TOL_SCORE:.0e})')
    assert d <= TOL_SCORE
    assert st['losses'] == pytest.approx(ref['losses'], abs=1e-5)   # the recorded loss is the global batch's

    w2 = torch.load(tmp_path/'clf'/'checkpoints'/'last.pt', weights_only=False)['model']
    d = _max_diff(m1.state_dict(), w2)
    print(f'classifier: max |w(1 process) - w(2 processes)| = {d:.1e} (tolerance {TOL_CLASSIFIER:.0e})')
    assert d <= TOL_CLASSIFIER
    assert _max_diff(m1.state_dict(), _mlp().state_dict()) > 100 * TOL_CLASSIFIER   # it did train
    for k in ('train_loss', 'loss_orig', 'loss_diffaug', 'train_acc', 'val_loss', 'val_acc'):
        assert h2[k][0] == pytest.approx(h1[k][0], abs=1e-5), k   # the curves cover all processes, not rank 0's share
