"Score-model training: resume after a real kill, loading failures. (The papermill notebook runs end to end in test_cli.py.)"
import json, os, signal, subprocess, sys
from pathlib import Path
import pytest, torch
from diffaug_nb.data import load_mnist5k
from diffaug_nb.diffusion import Denoiser
from diffaug_nb.scoremodel import train_score_model, is_trained

ROOT = Path(__file__).resolve().parent.parent
KW = dict(steps=24, batch_size=8, width=8, ckpt_every=4, device='cpu', progress=False)

def test_resume_after_kill(tmp_path):
    "A training process killed (SIGKILL) right after a checkpoint resumes there and ends with the weights of an uninterrupted run."
    xs = load_mnist5k('train').tensors[0][:64]
    ref = train_score_model(xs, tmp_path/'ref', **KW)
    out = tmp_path/'killed'
    # the child stops itself (SIGSTOP) as soon as its first checkpoint is on disk: the kill follows a signal from
    # the process, not a clock, so it lands at step ckpt_every on any machine
    code = (f"import os, signal, diffaug_nb.scoremodel as sm\n"
            f"from diffaug_nb.data import load_mnist5k\n"
            f"save = sm.atomic_torch_save\n"
            f"def save_then_stop(obj, path): save(obj, path); os.kill(os.getpid(), signal.SIGSTOP)\n"
            f"sm.atomic_torch_save = save_then_stop\n"
            f"xs = load_mnist5k('train').tensors[0][:64]\n"
            f"sm.train_score_model(xs, {str(out)!r}, **{dict(KW, steps=10**6)!r})")
    p = subprocess.Popen([sys.executable, '-c', code])
    _, status = os.waitpid(p.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the training process ended before its first checkpoint (status {status})"
    p.send_signal(signal.SIGKILL); p.wait()
    ck = out/'checkpoints'/'last.pt'
    assert ck.exists() and not is_trained(out), "the killed run left a checkpoint and no finished model"
    assert torch.load(ck, weights_only=False)['step'] == KW['ckpt_every']
    resumed = train_score_model(xs, out, **KW)
    prov = json.loads((out/'provenance.json').read_text())
    assert prov['steps_done'] == KW['steps'] and len(prov['loss_curve']) == KW['steps']
    for a, b in zip(ref.unet.parameters(), resumed.unet.parameters()): torch.testing.assert_close(a, b)

def test_hub_id_fails_fast_with_advice(monkeypatch):
    "A hub id is looked up in the local cache only (no network attempt: that is what makes it fail fast), with advice."
    import diffaug_nb.diffusion as dm
    asked, orig = [], dm.UNet2DModel.from_pretrained
    def spy(*a, **k): asked.append(k.get('local_files_only')); return orig(*a, **k)
    monkeypatch.delenv('DIFFAUG_ALLOW_HUB', raising=False)
    monkeypatch.setattr(dm.UNet2DModel, 'from_pretrained', spy)
    with pytest.raises(OSError, match='local path'): Denoiser.from_pretrained('google/ddpm-cifar10-32')
    assert asked == [True]

def test_bad_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match='not a diffusers model directory'): Denoiser.from_pretrained(tmp_path)
