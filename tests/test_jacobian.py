"Jacobian of the denoiser and Theorem 4.1 (d E[m_t|x]/dx = Cov[m_t|x]/sigma^2) against independent references."
import pytest, torch
from diffaug_nb.diffusion import Denoiser, EmpiricalDenoiser, vp_scheduler, ve_scheduler, tiny_unet
from diffaug_nb.scoremodel import make_unet
from diffaug_nb.jacobian import (denoiser_jacobian, jacobian_svd, top_singular, theorem41_gap, GaussianDenoiser,
                                 classic_attention, jacobian_stats, symmetry_table)

f64 = torch.float64
SCHEDULERS = {'vp': (vp_scheduler, (20, 150, 400, 700, 950)), 've': (lambda: ve_scheduler(sigma_min=0.01, sigma_max=5.), (500, 700, 850, 950))}

@pytest.fixture(scope='module')
def points():
    torch.manual_seed(0)
    return torch.rand(15, 1, 2, 3, dtype=f64) * 2 - 1

@pytest.mark.parametrize('kind', ['vp', 've'])
def test_theorem41_exact_on_empirical_denoiser(points, kind):
    make, ts = SCHEDULERS[kind]
    emp = EmpiricalDenoiser(points, make())
    g = torch.Generator().manual_seed(1)
    for t in ts:
        x = emp.diffuse(points[:5], t, torch.randn(points[:5].shape, generator=g, dtype=f64))
        J = denoiser_jacobian(emp, x, t, kind='mean')
        C = emp.cov_m(x, t) / emp.sigma(t, x).reshape(-1, 1, 1)**2
        torch.testing.assert_close(J, C, rtol=0, atol=1e-11 * max(1., C.abs().max().item()))
        assert theorem41_gap(emp, x, t) < 1e-11
        # x0 version: d x0_hat/dx = sqrt(abar) Cov[x0|x]/sigma^2 = Cov[m_t|x]/(sqrt(abar) sigma^2)
        Jx0 = denoiser_jacobian(emp, x, t, kind='x0')
        torch.testing.assert_close(Jx0, C / emp.abar(t, x).sqrt().reshape(-1, 1, 1), rtol=1e-9, atol=1e-11)

def test_theorem41_cov_from_weights_independently(points):
    "Cov[m_t|x] rebuilt from the posterior weights by a plain loop (not EmpiricalDenoiser.cov_m)."
    emp, t = EmpiricalDenoiser(points, vp_scheduler()), 300
    x = emp.diffuse(points[:2], t)
    w, P, a, s = emp.weights(x, t), points.flatten(1), emp.abar(t, x)[0].item(), emp.sigma(t, x)[0].item()
    J = denoiser_jacobian(emp, x, t, kind='mean')
    for b in range(2):
        mean = sum(w[b, i] * a**.5 * P[i] for i in range(len(P)))
        cov = sum(w[b, i] * torch.outer(a**.5 * P[i] - mean, a**.5 * P[i] - mean) for i in range(len(P)))
        torch.testing.assert_close(J[b], cov / s**2, rtol=1e-9, atol=1e-12)

@pytest.fixture(scope='module')
def gaussian():
    torch.manual_seed(2)
    D = 4
    L = torch.randn(D, D, dtype=f64) * 0.4
    return torch.randn(D, dtype=f64) * 0.3, L @ L.T + 0.02 * torch.eye(D, dtype=f64)

@pytest.mark.parametrize('kind', ['vp', 've'])
def test_gaussian_closed_form(gaussian, kind):
    "VP: d x0_hat/dx_t = sqrt(abar) S (abar S + sigma^2 I)^-1; VE: S (S + sigma^2 I)^-1 — written out here, not taken from the class."
    mu, S = gaussian
    sch = SCHEDULERS[kind][0]()
    gd = GaussianDenoiser(mu.reshape(1, 2, 2), S, sch)
    x = torch.randn(3, 1, 2, 2, dtype=f64)
    I = torch.eye(4, dtype=f64)
    for t in (100, 500, 900):
        a, s = gd.abar(t, x)[0].item(), gd.sigma(t, x)[0].item()
        if kind == 've': assert a == 1.
        ref = a**.5 * S @ torch.linalg.inv(a * S + s**2 * I)
        J = denoiser_jacobian(gd, x, t)
        torch.testing.assert_close(J, ref.expand(3, 4, 4), rtol=1e-10, atol=1e-12)
        # Theorem 4.1 in closed form: the Jacobian of the mean equals Cov[m_t|x]/sigma^2 = abar (S - a S A^-1 S)/sigma^2
        cov_x0 = S - a * S @ torch.linalg.inv(a * S + s**2 * I) @ S
        torch.testing.assert_close(denoiser_jacobian(gd, x, t, kind='mean')[0], a * cov_x0 / s**2, rtol=1e-8, atol=1e-10)

def test_gaussian_closed_form_against_empirical_samples(gaussian):
    "Independent check of the VP formula: the exact denoiser of 30k samples from N(mu, S) (Monte Carlo, loose tolerance)."
    mu, S = gaussian
    torch.manual_seed(3)
    samples = torch.distributions.MultivariateNormal(mu, S).sample((30000,)).reshape(-1, 1, 2, 2)
    emp, gd = EmpiricalDenoiser(samples, vp_scheduler()), GaussianDenoiser(mu.reshape(1, 2, 2), S, vp_scheduler())
    for t in (250, 500):
        x = gd.diffuse(mu.reshape(1, 1, 2, 2).expand(4, -1, -1, -1), t)
        Je, Jg = denoiser_jacobian(emp, x, t), gd.jacobian_x0(x, t)
        assert (Je - Jg).abs().max() < 0.08 * Jg.abs().max()
        torch.testing.assert_close(emp.x0_hat(x, t), gd.x0_hat(x, t), rtol=0, atol=0.03)

@pytest.fixture(scope='module')
def unet_den():
    torch.manual_seed(0)
    return Denoiser(tiny_unet(4, 1, 8), vp_scheduler()).double().eval()

def test_jacobian_finite_differences_batch_and_per_sample_t(unet_den):
    x, t = torch.randn(3, 1, 4, 4, dtype=f64), torch.tensor([10, 300, 800])
    J = denoiser_jacobian(unet_den, x, t, chunk_size=7)
    assert J.shape == (3, 16, 16)
    h = 1e-6
    with torch.no_grad():
        for j in (0, 5, 15):
            e = torch.zeros(1, 16, dtype=f64); e[0, j] = h; e = e.reshape(1, 1, 4, 4)
            fd = (unet_den.x0_hat(x + e, t) - unet_den.x0_hat(x - e, t)).flatten(1) / (2 * h)
            torch.testing.assert_close(J[:, :, j], fd, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(denoiser_jacobian(unet_den, x, t, method='loop'), J, rtol=1e-9, atol=1e-11)
    # the batched Jacobian of an image does not depend on the other images in the batch
    torch.testing.assert_close(denoiser_jacobian(unet_den, x[1:2], t[1:2])[0], J[1], rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match='kind'): denoiser_jacobian(unet_den, x, t, kind='eps')

def test_modes_and_processors_restored():
    u = make_unet(16, 1, 8)
    den = Denoiser(u, vp_scheduler()).train()
    procs = [type(m.processor) for m in u.modules() if hasattr(m, 'processor')]
    denoiser_jacobian(den, torch.randn(1, 1, 16, 16), 100, chunk_size=64)
    assert den.training and all(p.requires_grad for p in den.parameters())
    assert [type(m.processor) for m in u.modules() if hasattr(m, 'processor')] == procs
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        ref = u.eval()(x, 5).sample
        with classic_attention(u): out = u(x, 5).sample
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

def test_top_singular_matches_full_svd(points, unet_den):
    # exact denoiser: low-rank J (rank <= N-1), singular values well separated
    emp = EmpiricalDenoiser(points, vp_scheduler())
    x = emp.diffuse(points[:3], 300)
    ref, top = jacobian_svd(denoiser_jacobian(emp, x, 300)), top_singular(emp, x, 300, k=3, iters=4, oversample=3)
    torch.testing.assert_close(top.S, ref.S[:, :3], rtol=1e-8, atol=1e-12)
    # a UNet (forward-mode jvp through its attention block via classic_attention): nearly flat spectrum, more iterations
    den = Denoiser(make_unet(8, 1, 8), vp_scheduler()).double().eval()
    x = torch.randn(2, 1, 8, 8, dtype=f64)
    ref, top = jacobian_svd(denoiser_jacobian(den, x, 300)), top_singular(den, x, 300, k=3, iters=20, chunk_size=4)
    torch.testing.assert_close(top.S, ref.S[:, :3], rtol=1e-5, atol=0)
    cos = (top.Vh * ref.Vh[:, :3]).sum(-1).abs()
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match='exceeds'): top_singular(den, x, 300, k=60, oversample=10)

def test_jacobian_stats_and_symmetry_table(points):
    A = torch.tensor([[[2., 1.], [1., 3.]], [[0., 1.], [-1., 0.]]], dtype=f64)   # symmetric; a rotation
    st = jacobian_stats(A)
    torch.testing.assert_close(st['asym'], torch.tensor([0., 2**.5 * 2 / 2**.5], dtype=f64))
    torch.testing.assert_close(st['eig_imag_max'], torch.tensor([0., 1.], dtype=f64))
    torch.testing.assert_close(st['s_max'], torch.tensor([(5 + 5**.5) / 2, 1.], dtype=f64))
    emp = EmpiricalDenoiser(points, vp_scheduler())
    tab = symmetry_table(emp, torch.rand(2, 1, 2, 3, dtype=f64), ts=(100, 400))
    assert list(tab.index) == [100, 400] and (tab.asym_max < 1e-12).all() and (tab.eig_min > -1e-12).all()


def test_trained_unet_randomized_svd_matches_full_svd():
    """What nbs/11_jacobian's `slow` cells check, here on one digit: on the trained 784-dim UNet, two power iterations of
    `top_singular` give the top singular values of the full Jacobian's SVD within 1%."""
    from diffaug_nb.scoremodel import load_denoiser, embedded_model_dir, is_trained
    from diffaug_nb.data import load_mnist5k
    from diffaug_nb.diffusion import to_model
    if not is_trained(embedded_model_dir(name='embedded-weak')): pytest.skip('the committed embedded-weak model is absent')
    den = load_denoiser('embedded-weak', device='cpu', train_if_absent=False)
    x = load_mnist5k('test').tensors[0][:1]
    xt = den.diffuse(to_model(x), 300, torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    svd = jacobian_svd(denoiser_jacobian(den, xt, 300, chunk_size=196), k=8)
    top = top_singular(den, xt, 300, k=8, iters=2)
    assert ((top.S[:, :3] - svd.S[:, :3]).abs() / svd.S[:, :3]).max() < 0.01, (top.S, svd.S)
