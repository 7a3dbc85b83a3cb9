"Evaluation modes (Default, DE, DDA, DDA-SE), entropy vs t and the DDA low-pass filter, against independent references."
import math, types
import numpy as np, pytest, torch
from diffusers import DDIMScheduler
from diffaug_nb.sampling import sample_ddim
from diffaug_nb.diffusion import Denoiser, EmpiricalDenoiser, vp_scheduler, ve_scheduler, tiny_unet
from diffaug_nb.evaluate import (predict_default, predict_de, entropy_vs_t, lowpass, default_D, sample_dda, dda_adapt, LowpassGuidance,
                                 predict_dda, evaluate_modes, image_noise, dda_timesteps, dda_scale, MODES)

SCH = vp_scheduler()
AB = SCH.alphas_cumprod.double().numpy()


def softmax_np(z):
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    pts = torch.rand(6, 1, 4, 4) * 2 - 1
    W = torch.randn(16, 4, dtype=torch.float64)
    clf = lambda x: x.flatten(1).double() @ W
    return pts, W.numpy(), clf


def x0_hat_np(xt, t, P):
    "Exact posterior mean of a point set P (model space) given x_t, in numpy."
    d2 = ((xt[:, None] - math.sqrt(AB[t]) * P[None]) ** 2).sum(-1) / (2 * (1 - AB[t]))
    w = np.exp(-(d2 - d2.min(1, keepdims=True)))
    return (w / w.sum(1, keepdims=True)) @ P


def test_predict_de_matches_hand_average(setup):
    pts, W, clf = setup
    emp = EmpiricalDenoiser(pts, SCH)
    x = torch.rand(5, 1, 4, 4)
    ts = [0, 50, 250, 450, 900]
    nz = torch.randn(len(ts), *x.shape)
    p, mem = predict_de(clf, emp, x, ts, batch_size=2, device='cpu', noise=nz, return_members=True, progress=False)
    P, x0 = pts.flatten(1).double().numpy(), 2 * x.flatten(1).double().numpy() - 1
    members = []
    for k, t in enumerate(ts):
        xt = math.sqrt(AB[t]) * x0 + math.sqrt(1 - AB[t]) * nz[k].flatten(1).double().numpy()
        img = (np.clip(x0_hat_np(xt, t, P), -1, 1) + 1) / 2
        members.append(softmax_np(img @ W))
    np.testing.assert_allclose(mem['probs'].numpy(), np.stack(members), atol=1e-5)
    np.testing.assert_allclose(p.numpy(), np.mean(members, 0), atol=1e-5)
    np.testing.assert_allclose(p.sum(1).numpy(), 1, atol=1e-6)
    assert mem['t'] == ts and mem['x0_hat'].shape == (len(ts), 5, 1, 4, 4)


def test_predict_de_seeded_noise_is_per_image(setup):
    pts, W, clf = setup
    emp = EmpiricalDenoiser(pts, SCH)
    x, ts = torch.rand(4, 1, 4, 4), [10, 300]
    nz = image_noise(range(4), (len(ts), 1, 4, 4), seed=3).transpose(0, 1)
    a = predict_de(clf, emp, x, ts, batch_size=3, device='cpu', seed=3, progress=False)
    b = predict_de(clf, emp, x, ts, batch_size=4, device='cpu', noise=nz, progress=False)
    torch.testing.assert_close(a, b)
    c = predict_de(clf, emp, x, ts, device='cpu', seed=4, progress=False)
    assert not torch.allclose(a, c)


def test_de_at_t0_is_default_for_smooth_classifier(setup):
    _, _, clf = setup
    den = Denoiser(tiny_unet(4, 1, 8), SCH).eval()
    x = torch.rand(8, 1, 4, 4) * 0.8 + 0.1  # away from the clamp
    torch.testing.assert_close(predict_de(clf, den, x, [0], device='cpu', progress=False),
                               predict_default(clf, x, device='cpu', progress=False), atol=0.02, rtol=0)


def test_entropy_vs_t_uniform_and_constant():
    den = Denoiser(tiny_unet(4, 1, 8), SCH).eval()
    x = torch.rand(5, 1, 4, 4)
    H = entropy_vs_t(lambda z: torch.zeros(len(z), 10), den, x, [0, 400, 999], device='cpu', progress=False)
    np.testing.assert_allclose(H.numpy(), math.log(10), rtol=1e-6)
    q = np.array([0.7, 0.2, 0.1])
    H = entropy_vs_t(lambda z: torch.log(torch.tensor(q, dtype=torch.float32)).expand(len(z), 3), den, x, [100],
                     device='cpu', progress=False)
    np.testing.assert_allclose(H.numpy(), -(q * np.log(q)).sum(), rtol=1e-5)


def test_lowpass_area_is_block_mean_projection():
    x = torch.rand(3, 2, 12, 12, dtype=torch.float64)
    A = lowpass(x, 4, 'area')
    ref = x.numpy().reshape(3, 2, 3, 4, 3, 4).mean((3, 5))
    np.testing.assert_allclose(A.numpy(), np.repeat(np.repeat(ref, 4, 2), 4, 3), atol=1e-12)
    torch.testing.assert_close(lowpass(A, 4, 'area'), A)
    y = torch.rand_like(x)
    torch.testing.assert_close((A * y).sum(), (x * lowpass(y, 4, 'area')).sum())


@pytest.mark.parametrize('mode', ['bicubic', 'area'])
def test_lowpass_keeps_constants_and_smooth_images(mode):
    c = torch.full((2, 3, 28, 28), -0.4)
    torch.testing.assert_close(lowpass(c, 4, mode), c, atol=1e-6, rtol=0)
    x = torch.rand(4, 1, 28, 28)
    B = lowpass(x, 4, mode)
    assert (lowpass(B, 4, mode) - B).norm() <= 0.2 * (x - B).norm()
    assert B.var() < 0.5 * x.var()  # removes most of the white noise


def test_default_D():
    assert [default_D(s) for s in (8, 28, 32, 64, 256)] == [1, 4, 4, 8, 8]


def test_dda_unguided_is_ddim_and_ddpm():
    "scale=0: eta=0 is diffusers' DDIM; eta=1 is DDIM(eta=1) with the same step noise (= respaced DDPM posterior)."
    torch.manual_seed(1)
    emp = EmpiricalDenoiser(torch.rand(5, 1, 4, 4) * 2 - 1, SCH)
    xr = torch.rand(3, 1, 4, 4) * 2 - 1
    n0, zs = torch.randn(xr.shape), torch.randn(50, *xr.shape)
    for eta in (0., 1.):
        ours = sample_dda(emp, xr, 500, 50, scale=0, eta=eta, noise=n0, noise_sampler=lambda i: zs[i], disable=True)
        ddim = DDIMScheduler(num_train_timesteps=1000, beta_schedule='linear', clip_sample=True, set_alpha_to_one=True)
        ddim.set_timesteps(100)
        xt = emp.diffuse(xr, 500, noise=n0)
        for i, t in enumerate(range(500, -1, -10)):   # ... 10 -> 0, then 0 -> clean (set_alpha_to_one)
            xt = ddim.step(emp.eps(xt, t), t, xt, eta=eta, use_clipped_model_output=True,
                           variance_noise=zs[i] if eta and t > 0 else None).prev_sample
        torch.testing.assert_close(ours, xt, atol=1e-4, rtol=0)


def test_dda_eta1_step_is_respaced_ddpm_posterior():
    "One ancestral step from t to t'=0 by hand, q(x_t'|x_t, x0) with beta' = 1 - abar_t/abar_t', then t=0 -> clip(x0_hat)."
    emp = EmpiricalDenoiser(torch.rand(4, 1, 3, 3, dtype=torch.float64) * 2 - 1, SCH)
    xr = torch.rand(2, 1, 3, 3, dtype=torch.float64) * 2 - 1
    n0, z = torch.randn(xr.shape, dtype=torch.float64), torch.randn(xr.shape, dtype=torch.float64)
    out = sample_dda(emp, xr, 300, 1, scale=0, eta=1., noise=n0, noise_sampler=lambda i: z, disable=True)
    xt = (math.sqrt(AB[300]) * xr + math.sqrt(1 - AB[300]) * n0).flatten(1).numpy()
    x0 = np.clip(x0_hat_np(xt, 300, emp.points.flatten(1).numpy()), -1, 1)
    a, ap = AB[300], AB[0]
    beta = 1 - a / ap
    mean = math.sqrt(ap) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - ap) / (1 - a) * xt
    var = (1 - ap) / (1 - a) * beta
    x_at_0 = mean + math.sqrt(var) * z.flatten(1).numpy()
    np.testing.assert_allclose(out.flatten(1).numpy(), np.clip(x0_hat_np(x_at_0, 0, emp.points.flatten(1).numpy()), -1, 1), atol=1e-8)


def test_dda_guidance_is_the_norm_gradient():
    "One guided step = unguided step - scale * grad_x ||LP(x_ref) - LP(clamp(x0_hat(x)))||, grad by central differences."
    torch.manual_seed(2)
    emp = EmpiricalDenoiser(torch.rand(4, 1, 4, 4, dtype=torch.float64) * 1.6 - 0.8, SCH)
    xr = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    n0 = torch.randn(xr.shape, dtype=torch.float64)
    xt = emp.diffuse(xr, 200, noise=n0)
    g0 = sample_ddim(LowpassGuidance(emp, xr, 0., 2), xt, [200])     # one step: 200 -> clean
    g1 = sample_ddim(LowpassGuidance(emp, xr, 0.3, 2), xt, [200])
    f = lambda x: (lowpass(xr, 2) - lowpass(emp.x0_hat(x, 200, clamp=True), 2)).flatten(1).norm(dim=1).sum()
    grad, h = torch.zeros_like(xt), 1e-6
    for j in range(xt.numel()):
        e = torch.zeros_like(xt).flatten(); e[j] = h; e = e.view_as(xt)
        grad.view(-1)[j] = (f(xt + e) - f(xt - e)) / (2 * h)
    torch.testing.assert_close(g1, g0 - 0.3 * grad, atol=1e-6, rtol=0)


def test_dda_rejects_ve():
    with pytest.raises(ValueError, match='VP'):
        sample_dda(Denoiser(None, ve_scheduler()), torch.zeros(1, 1, 4, 4))


def test_dda_schedule_and_scale():
    ts = dda_timesteps(500, 50)
    assert ts[0] == 500 and ts[-1] == 0 and len(ts) == 51 and all(a - b == 10 for a, b in zip(ts, ts[1:]))
    assert dda_scale((1, 28, 28)) == pytest.approx(1.0)  # calibrated at 28 px, D=4
    assert dda_scale((3, 256, 256)) == pytest.approx(math.sqrt(3 * 32 * 32 / 49))  # D=8: k = 3 x 32 x 32
    assert dda_scale((1, 28, 28), D=2, scale_ref=2.) == pytest.approx(4.)


def test_dda_adapt_batch_independent_and_predict_dda_se():
    den = Denoiser(tiny_unet(8, 1, 8), SCH).eval()
    x = torch.rand(5, 1, 8, 8)
    clf = lambda z: z.flatten(1) @ torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    kw = dict(t_start=100, steps=4, device='cpu', progress=False)
    a = dda_adapt(den, x, batch_size=2, **kw)
    torch.testing.assert_close(a[:3], dda_adapt(den, x[:3], batch_size=3, **kw), atol=1e-5, rtol=0)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    se = predict_dda(clf, den, x, se=True, **kw)
    torch.testing.assert_close(se, (predict_default(clf, a, device='cpu', progress=False)
                                    + predict_default(clf, x, device='cpu', progress=False)) / 2)


def test_evaluate_modes(monkeypatch):
    import diffaug_nb.evaluate as ev
    clock = iter(range(0, 10**6, 1))   # a fake clock: every reading is 1 s after the previous one
    monkeypatch.setattr(ev, 'time', types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    den = Denoiser(tiny_unet(8, 1, 8), SCH).eval()
    x, y = torch.rand(7, 1, 8, 8), torch.randint(0, 3, (7,))
    clf = lambda z: z.flatten(1) @ torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    r = evaluate_modes(clf, den, x, y, ts=[0, 200], batch_size=3, device='cpu', dda_kwargs=dict(t_start=100, steps=3),
                       progress=False, return_probs=True)
    assert tuple(r) == MODES
    for m, v in r.items():
        assert v['n'] == 7
        assert v['accuracy'] == pytest.approx(float((v['probs'].argmax(1) == y).float().mean()))
    torch.testing.assert_close(r['default']['probs'], torch.softmax(clf(x), -1))
    torch.testing.assert_close(r['dda_se']['probs'], (r['default']['probs'] + r['dda']['probs']) / 2)
    # each timed block reads the clock twice (1 s): Default and DE one block each, DDA two (adapt + classify),
    # DDA-SE the DDA blocks plus the Default one it averages with; per image over the 7 images
    assert {m: v['sec_per_image'] * 7 for m, v in r.items()} == pytest.approx(dict(default=1, de=1, dda=2, dda_se=3))
    only = evaluate_modes(clf, den, x, y, modes=('de',), ts=[0, 200], device='cpu', progress=False)
    assert list(only) == ['de'] and only['de']['accuracy'] == pytest.approx(r['de']['accuracy'])
    with pytest.raises(ValueError, match='unknown mode'):
        evaluate_modes(clf, den, x, y, modes=('tta',), device='cpu')
    with pytest.raises(ValueError, match='labels'):
        evaluate_modes(clf, den, x, y[:3], device='cpu')


def test_modules_run_ineval_mode_and_modes_are_restored():
    import torch.nn as nn
    bn = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.BatchNorm1d(3)).train()
    bn(torch.rand(32, 1, 4, 4))
    den = Denoiser(tiny_unet(4, 1, 8), SCH).train()
    x = torch.rand(1, 1, 4, 4)  # a batch of one: BatchNorm1d in train mode would raise
    p = predict_de(bn, den, x, [0, 100], device='cpu', progress=False)
    assert bn.training and den.training
    torch.testing.assert_close(p, predict_de(bn.eval(), den.eval(), x, [0, 100], device='cpu', progress=False))
