"Score-model training: resume after a real kill, loading failures. (The papermill notebook runs end to end in test_cli.py.)"
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from diffaug_nb.data import load_mnist5k
from diffaug_nb.diffusion import Denoiser
from diffaug_nb.scoremodel import train_score_model, is_trained

ROOT = Path(__file__).resolve().parent.parent
KW = dict(steps=24, batch_size=8, width=8, ckpt_every=4, device='cpu', progress=False)

def test_resume_after_kill(tmp_path):
    "A training process killed (SIGKILL) after a checkpoint resumes there and ends with the weights of an uninterrupted run."
    xs = load_mnist5k('train').tensors[0][:64]
    ref = train_score_model(xs, tmp_path/'ref', **KW)
    out = tmp_path/'killed'
    code = (f"import torch; from diffaug_nb.data import load_mnist5k; from diffaug_nb.scoremodel import train_score_model\n"
            f"xs = load_mnist5k('train').tensors[0][:64]\n"
            f"train_score_model(xs, {str(out)!r}, **{dict(KW, steps=10**6)!r})")
    p = subprocess.Popen([sys.executable, '-c', code])
    ck = out/'checkpoints'/'last.pt'
    t0 = time.time()
    while not ck.exists() and time.time() - t0 < 120: time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL); p.wait()
    assert ck.exists() and not is_trained(out), "the killed run left a checkpoint and no finished model"
    done = torch.load(ck, weights_only=False)['step']
    assert 0 < done < KW['steps'], f"killed too late to test resume (step {done})"
    resumed = train_score_model(xs, out, **KW)
    prov = json.loads((out/'provenance.json').read_text())
    assert prov['steps_done'] == KW['steps'] and len(prov['loss_curve']) == KW['steps']
    for a, b in zip(ref.unet.parameters(), resumed.unet.parameters()): torch.testing.assert_close(a, b)

def test_hub_id_fails_fast_with_advice():
    t0 = time.time()
    with pytest.raises(OSError, match='local path'): Denoiser.from_pretrained('google/ddpm-cifar10-32')
    assert time.time() - t0 < 10

def test_bad_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match='not a diffusers model directory'): Denoiser.from_pretrained(tmp_path)
