"Gradients through the denoiser (Eq. 7), captum on DenoiseClassify, and the display normalisations, against references."
import numpy as np, pytest, torch, torch.nn as nn
from captum.attr import Saliency, IntegratedGradients, NoiseTunnel, InputXGradient
from diffaug_nb.diffusion import Denoiser, EmpiricalDenoiser, vp_scheduler, ve_scheduler, tiny_unet, to_model, to_unit
from diffaug_nb.gradients import (DenoiseClassify, denoised_grad, direct_grad, minmax_normalise, contrast_stretch,
                                  gradient_panels)
from diffaug_nb.plots import plot_grid, by_meta

f64 = torch.float64

@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)).double()
    den = Denoiser(tiny_unet(8, 1, 8), vp_scheduler()).double().eval()
    x0 = torch.rand(3, 1, 8, 8, dtype=f64)
    x_t = to_unit(den.diffuse(to_model(x0), 300))
    return clf, den, x0, x_t, torch.tensor([0, 2, 1])

@pytest.mark.parametrize('sched', [vp_scheduler, lambda: ve_scheduler(sigma_min=0.01, sigma_max=3.)])
def test_denoised_grad_closed_form_empirical_linear(sched):
    "Exact denoiser + softmax-linear classifier: grad = J^T W^T (e_y - p), J = Cov[m_t|x]/(sqrt(abar) sigma^2) from the weights."
    torch.manual_seed(1)
    pts = torch.rand(10, 1, 3, 3, dtype=f64) * 2 - 1
    emp = EmpiricalDenoiser(pts, sched())
    lin = nn.Sequential(nn.Flatten(), nn.Linear(9, 4)).double()
    t = 600
    x_t, y = to_unit(emp.diffuse(pts[:3], t)), torch.tensor([1, 3, 0])
    g = denoised_grad(lin, emp, x_t, t, y)
    xm = to_model(x_t)
    a, s = emp.abar(t, xm).reshape(-1, 1, 1), emp.sigma(t, xm).reshape(-1, 1, 1)
    J = emp.cov_m(xm, t) / (a.sqrt() * s**2)
    u = to_unit(emp.x0_hat(xm, t)).flatten(1)
    p = (u @ lin[1].weight.T + lin[1].bias).softmax(-1)
    ref = (J.transpose(1, 2) @ ((torch.eye(4, dtype=f64)[y] - p) @ lin[1].weight)[..., None])[..., 0]
    torch.testing.assert_close(g.flatten(1), ref, rtol=1e-9, atol=1e-12)

def test_denoised_grad_finite_differences_and_modes(setup):
    clf, den, x0, x_t, y = setup
    clf.train()
    g = denoised_grad(clf, den, x_t, 300, y)
    assert clf.training and not den.training
    clf.eval()
    f = lambda x: DenoiseClassify(clf, den, 300, log_probs=True)(x).gather(1, y[:, None]).sum()
    with torch.no_grad():
        for idx in [(0, 0, 1, 1), (2, 0, 7, 3)]:
            e = torch.zeros_like(x_t); e[idx] = 1e-6
            assert abs(g[idx] - (f(x_t + e) - f(x_t - e)) / 2e-6) < 1e-6
    # direct_grad: finite differences of the classifier itself
    gd = direct_grad(clf, x_t, y)
    lp = lambda x: clf(x).log_softmax(-1).gather(1, y[:, None]).sum()
    e = torch.zeros_like(x_t); e[1, 0, 4, 4] = 1e-6
    with torch.no_grad(): assert abs(gd[1, 0, 4, 4] - (lp(x_t + e) - lp(x_t - e)) / 2e-6) < 1e-6

def test_denoiseclassify_works_under_no_grad_and_clamp(setup):
    clf, den, x0, x_t, y = setup
    clf.eval()
    with torch.no_grad():
        g = denoised_grad(clf, den, x_t, 300, y)
        out = DenoiseClassify(clf, den, 300)(x_t)
    assert g.abs().sum() > 0 and out.shape == (3, 3)
    # clamp=True: the chain rule with the clamp's mask, J^T (mask * grad_u log p(y|u)), u = the clamped denoised image
    from diffaug_nb.jacobian import denoiser_jacobian
    t = 700
    xm = to_model(x_t)
    mask = (den.x0_hat(xm, t).abs() < 1).flatten(1).to(f64)
    assert 0 < mask.mean() < 1
    u = DenoiseClassify(clf, den, t, clamp=True).denoise(x_t).detach()
    assert (u >= 0).all() and (u <= 1).all()
    J = denoiser_jacobian(den, xm, t)
    ref = (J.transpose(1, 2) @ (mask * direct_grad(clf, u, y).flatten(1))[..., None])[..., 0]
    torch.testing.assert_close(denoised_grad(clf, den, x_t, t, y, clamp=True).flatten(1), ref, rtol=1e-5, atol=1e-8)

def _closed_form(lin, emp, t, x_t, y):
    "d log softmax(lin(x0_hat(x)))_y / dx for the exact denoiser: J^T W^T (e_y - p), J = Cov[m_t|x]/(sqrt(abar) sigma^2)."
    xm = to_model(x_t)
    a, s = emp.abar(t, xm).reshape(-1, 1, 1), emp.sigma(t, xm).reshape(-1, 1, 1)
    J = emp.cov_m(xm, t) / (a.sqrt() * s**2)
    u = to_unit(emp.x0_hat(xm, t)).flatten(1)
    p = (u @ lin[1].weight.T + lin[1].bias).softmax(-1)
    k = lin[1].weight.shape[0]
    return (J.transpose(1, 2) @ ((torch.eye(k, dtype=f64)[y] - p) @ lin[1].weight)[..., None])[..., 0]

def test_captum_saliency_and_smoothgrad_against_closed_form():
    "captum's Saliency and NoiseTunnel(SmoothGrad) on DenoiseClassify equal the closed-form gradient (at the noisy copies captum drew)."
    torch.manual_seed(2)
    pts = torch.rand(10, 1, 3, 3, dtype=f64) * 2 - 1
    emp, lin, t = EmpiricalDenoiser(pts, vp_scheduler()), nn.Sequential(nn.Flatten(), nn.Linear(9, 4)).double(), 600
    x_t, y = to_unit(emp.diffuse(pts[:3], t)), torch.tensor([1, 3, 0])
    m = DenoiseClassify(lin, emp, t, log_probs=True)
    sal = Saliency(m).attribute(x_t, target=y, abs=False)
    torch.testing.assert_close(sal.flatten(1), _closed_form(lin, emp, t, x_t, y), rtol=1e-9, atol=1e-12)
    seen = []
    class Recorder(nn.Module):
        def forward(self, x): seen.append(x.detach().clone()); return m(x)
    nt = NoiseTunnel(Saliency(Recorder())).attribute(x_t, target=y, nt_type='smoothgrad', nt_samples=5, stdevs=0.05, abs=False)
    xs = torch.cat(seen)
    assert len(xs) == 15 and not torch.allclose(nt, sal)
    owner = torch.cdist(xs.flatten(1), x_t.flatten(1)).argmin(1)     # which image each noisy copy came from
    assert torch.bincount(owner).tolist() == [5, 5, 5]
    g = _closed_form(lin, emp, t, xs, y[owner])
    ref = torch.stack([g[owner == i].mean(0) for i in range(3)])
    torch.testing.assert_close(nt.flatten(1), ref, rtol=1e-7, atol=1e-10)

def test_captum_attributions(setup):
    clf, den, x0, x_t, y = setup
    clf.eval()
    m = DenoiseClassify(clf, den, 300, log_probs=True)
    sal = Saliency(m).attribute(x_t, target=y, abs=False)
    torch.testing.assert_close(sal, denoised_grad(clf, den, x_t, 300, y), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(Saliency(m).attribute(x_t, target=y), sal.abs())
    ig, delta = IntegratedGradients(m).attribute(x_t, target=y, n_steps=64, return_convergence_delta=True)
    with torch.no_grad():
        F = m(x_t).gather(1, y[:, None])[:, 0] - m(torch.zeros_like(x_t)).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(ig.flatten(1).sum(1), F, rtol=0, atol=1e-2)     # completeness
    assert delta.abs().max() < 1e-2
    torch.manual_seed(0)
    nt2 = NoiseTunnel(Saliency(m)).attribute(x_t, target=y, nt_type='smoothgrad', nt_samples=4, stdevs=0.1, abs=False)
    assert nt2.shape == x_t.shape and not torch.allclose(nt2, sal)
    torch.testing.assert_close(InputXGradient(m).attribute(x_t, target=y), x_t * sal)

def test_minmax_and_contrast_stretch_against_numpy():
    rng = np.random.default_rng(0)
    g = torch.from_numpy(rng.standard_normal((4, 3, 6, 5)) * np.array([1e-6, 1., 50., 1e4])[:, None, None, None])
    mm, cs = minmax_normalise(g), contrast_stretch(g, 2, 97)
    for i in range(4):
        a = g[i].numpy()
        np.testing.assert_allclose(mm[i].numpy(), (a - a.min()) / (a.max() - a.min()), rtol=1e-12)
        lo, hi = np.percentile(a, [2, 97])
        np.testing.assert_allclose(cs[i].numpy(), (np.clip(a, lo, hi) - lo) / (hi - lo), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(contrast_stretch(g, 0, 100), mm)
    # about lo% of the pixels clip to 0 and (100-hi)% to 1
    frac0 = (cs == 0).flatten(1).double().mean(1)
    assert ((frac0 > 0.01) & (frac0 < 0.05)).all()
    assert (minmax_normalise(torch.ones(2, 1, 3, 3)) == 0.5).all() and (contrast_stretch(torch.ones(1, 1, 3, 3)) == 0.5).all()
    with pytest.raises(ValueError): contrast_stretch(g, 90, 10)

def test_gradient_panels_and_grid(setup):
    clf, den, x0, x_t, y = setup
    cols = gradient_panels({'a': clf, 'b': clf}, den, x0, y, t=200, stretch=None)
    assert list(cols) == ['image', 'x_t (t=200)', 'a: through denoiser', 'a: on x_t', 'b: through denoiser', 'b: on x_t']
    torch.testing.assert_close(cols['a: through denoiser'], cols['b: through denoiser'])
    for v in cols.values(): assert v.shape == x0.shape and v.min() >= 0 and v.max() <= 1
    fig = plot_grid(cols)
    assert len(fig.data) == 6 * 3
    np.testing.assert_allclose(by_meta(fig)['0:2'].z, cols['a: through denoiser'][0, 0].numpy())
