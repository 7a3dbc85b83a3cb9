"""Classifier training: resume after an interrupted (and a killed) run, determinism, the cache, bad inputs."""
import json, signal, subprocess, sys, textwrap
import pytest, torch, torch.nn.functional as F
from diffaug_nb.data import load_mnist5k
from diffaug_nb.diffusion import EmpiricalDenoiser, vp_scheduler, to_model
from diffaug_nb.augment import DiffAug, diffaug_loss
from diffaug_nb.train import make_classifier, fit_classifier, get_classifier, classifier_dir


@pytest.fixture(scope='module')
def digits():
    x, y = load_mnist5k('train').tensors
    return x[:256], y[:256]


@pytest.fixture(scope='module')
def diffaug(digits):
    return DiffAug(EmpiricalDenoiser(to_model(digits[0][:64]), vp_scheduler()), 0, 600)


KW = dict(epochs=2, batch_size=64, ckpt_every=2, progress=False)


def train(digits, seed=0, **kw):
    torch.manual_seed(seed)
    m = make_classifier('cnn')
    h = fit_classifier(m, *digits, seed=seed, **{**KW, **kw})
    return m, h


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def untimed(h): return {k: v for k, v in h.items() if k != 'time_s'}


class Interrupt(Exception): pass


def interrupt_at(step):
    def cb(info):
        if info['step'] == step: raise Interrupt
    return cb


@pytest.mark.parametrize('stop', [3, 5])  # 3: mid-epoch (checkpoint at step 2); 5: just after the epoch-end checkpoint
def test_resume_matches_uninterrupted(digits, diffaug, tmp_path, stop):
    kw = dict(policy='randaugment+mixup', diffaug=diffaug)  # every random source: data order, policy, MixUp, DiffAug t/noise
    ref, href = train(digits, **kw)
    with pytest.raises(Interrupt):
        train(digits, out_dir=tmp_path, callback=interrupt_at(stop), **kw)
    ck = torch.load(tmp_path/'checkpoints'/'last.pt', weights_only=False)
    assert (ck['epoch'], ck['pos']) == {3: (0, 2), 5: (1, 0)}[stop]
    steps = []
    res, hres = train(digits, out_dir=tmp_path, callback=lambda i: steps.append(i['step']), **kw)
    assert steps[0] == {3: 3, 5: 5}[stop]  # resumed where the checkpoint stopped, not from the start
    assert same_weights(ref, res)
    assert untimed(href) == untimed(hres)
    assert json.loads((tmp_path/'curves.json').read_text()) == hres


def test_resume_after_sigkill(digits, tmp_path):
    "A training process killed with SIGKILL (no clean-up) resumes from its last checkpoint, to the same weights."
    code = textwrap.dedent(f"""
        import os, signal, torch
        from diffaug_nb.data import load_mnist5k
        from diffaug_nb.train import make_classifier, fit_classifier
        x, y = load_mnist5k('train').tensors
        torch.manual_seed(0); m = make_classifier('cnn')
        def cb(info):
            if info['step'] == 5: os.kill(os.getpid(), signal.SIGKILL)
        fit_classifier(m, x[:256], y[:256], policy='cutout', seed=0, out_dir={str(tmp_path)!r}, callback=cb,
                       epochs=2, batch_size=64, ckpt_every=3, progress=False)
    """)
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (tmp_path/'checkpoints'/'last.pt').exists()
    ref, _ = train(digits, policy='cutout', ckpt_every=3)
    res, _ = train(digits, policy='cutout', ckpt_every=3, out_dir=tmp_path)
    assert same_weights(ref, res)


def test_determinism(digits, diffaug):
    a, ha = train(digits, policy='augmix+cutmix', diffaug=diffaug, epochs=1)
    b, hb = train(digits, policy='augmix+cutmix', diffaug=diffaug, epochs=1)
    c, _ = train(digits, policy='augmix+cutmix', diffaug=diffaug, epochs=1, seed=1)
    assert same_weights(a, b) and untimed(ha) == untimed(hb)
    assert not same_weights(a, c)


class SpyDiffAug(DiffAug):
    "Records the batches DiffAug is applied to."
    def __init__(self, base):
        super().__init__(base.denoiser, base.t_min, base.t_max); self.seen = []
    def __call__(self, x, **kw):
        self.seen.append(x.clone()); return super().__call__(x, **kw)


@pytest.mark.parametrize('stack', [False, True])
def test_diffaug_branch_is_independent_of_policy(digits, diffaug, stack):
    "Default: DiffAug sees the plain training images (independent application, B.1); stack=True: a policy copy."
    x, _ = digits
    spy = SpyDiffAug(diffaug)
    train(digits, policy='cutout', diffaug=spy, epochs=1, stack=stack)
    plain = {tuple(im.flatten().tolist()) for im in x}
    seen = torch.cat(spy.seen)
    assert len(seen) == 4 * 64
    n_plain = sum(tuple(im.flatten().tolist()) in plain for im in seen)
    if stack: assert n_plain < len(seen) // 10  # (a cut-out square can fall on background only)
    else: assert n_plain == len(seen)


def test_diffaug_loss_is_half_sum_of_two_separate_ces(digits, diffaug):
    x, y = digits
    torch.manual_seed(0)
    m = make_classifier('cnn').train()  # train mode: BatchNorm uses each batch's own statistics
    g = lambda: torch.Generator().manual_seed(1)
    xd = diffaug(x[32:64], generator=g())
    ref = 0.5 * (F.cross_entropy(m(x[:32]), y[:32]) + F.cross_entropy(m(xd), y[32:64]))
    got = diffaug_loss(m, x[:32], y[:32], x[32:64], y[32:64], diffaug, generator=g())
    torch.testing.assert_close(got, ref)
    stacked = F.cross_entropy(m(torch.cat([x[:32], xd])), torch.cat([y[:32], y[32:64]]))
    assert not torch.allclose(got, stacked)  # one concatenated batch would differ (BatchNorm statistics)
    soft = diffaug_loss(m, x[:32], F.one_hot(y[:32], 10).float(), xd, F.one_hot(y[32:64], 10).float())
    torch.testing.assert_close(soft, ref)


def test_get_classifier_cache(tmp_path):
    c1 = get_classifier(epochs=1, cache_dir=tmp_path, progress=False)
    path = classifier_dir(cache_dir=tmp_path, epochs=1)
    assert c1.path == path and (path/'provenance.json').exists() and (path/'model.pt').exists()
    mtime = (path/'model.pt').stat().st_mtime
    c2 = get_classifier(epochs=1, cache_dir=tmp_path, progress=False)
    assert (path/'model.pt').stat().st_mtime == mtime  # loaded, not retrained
    assert same_weights(c1, c2) and c2.history == c1.history
    assert c2.history['val_acc'][-1] > 0.8 and not c2.training  # one epoch on 4,000 digits already learns
    with pytest.raises(FileNotFoundError, match='no cached classifier'):
        get_classifier(epochs=1, seed=1, cache_dir=tmp_path, train_if_absent=False)
    assert classifier_dir(policy='mixup') != classifier_dir(policy='cutmix') != classifier_dir(diffaug=True)
    assert classifier_dir(t_max=10) == classifier_dir()  # DiffAug's range only matters with DiffAug


def test_bad_inputs(digits, diffaug):
    x, y = digits
    m = make_classifier('cnn')
    with pytest.raises(ValueError, match='expects 1-channel images, got 3'): m(x[:2].expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match='N x C x H x W'): m(x[0])
    with pytest.raises(TypeError, match='float'): m((x[:2] * 255).to(torch.uint8))
    with pytest.raises(ValueError, match='expected 1 channel'): fit_classifier(m, x[:8].expand(-1, 3, -1, -1), y[:8], progress=False)
    with pytest.raises(ValueError, match=r'\[0,1\]'): fit_classifier(m, x[:8] * 255, y[:8], progress=False)
    with pytest.raises(ValueError, match='int64 class indices'): fit_classifier(m, x[:8], y[:8].float(), progress=False)
    with pytest.raises(ValueError, match='one per image'): fit_classifier(m, x[:8], y[:7], progress=False)
    with pytest.raises(ValueError, match=r'0\.\.4'): fit_classifier(make_classifier('cnn', n_classes=5), x[:64], y[:64], progress=False)
    with pytest.raises(ValueError, match='valid names: none, randaugment'): fit_classifier(m, x[:8], y[:8], policy='randaug', progress=False)
    with pytest.raises(ValueError, match='valid names: cnn, resnet18'): make_classifier('vgg')
    with pytest.raises(ValueError, match='unknown classifier parameter'): get_classifier(learning_rate=1.)
    with pytest.raises(ValueError, match='t_min <= t_max'): DiffAug(diffaug.denoiser, 500, 100)
    with pytest.raises(ValueError, match=r'\[0,1\]'): diffaug(x[:2] * 2 - 1)
