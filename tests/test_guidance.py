"Guidance classifiers and classifier guidance against independent references: autograd formulas, an exact Gaussian mixture."
import pytest, torch, torch.nn.functional as F
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal
from diffaug_nb.diffusion import Denoiser, vp_scheduler, ve_scheduler, tiny_unet
from diffaug_nb.sampling import ddim_timesteps
from diffaug_nb.guidance import (TimeCNN, DAClassifier, make_guidance_classifier, fit_guidance_classifier, guidance_params,
                                 guidance_dir, get_guidance_classifier, ClassifierGuidance, MeanFormGuidance,
                                 GaussianMixtureDenoiser, diffused_draws, guidance_accuracy, accuracy_vs_t, input_ablation,
                                 log_prob_grad, da_gradient_parts, guidance_table)

f64 = torch.float64


# --- the sampling protocol: diffaug_nb.sampling, and a minimal independent implementation written here -------------
def _ddim(model, x, timesteps, eta=0.0, generator=None, callback=None, extra_args=None):
    ts, extra = list(timesteps), extra_args or {}
    with torch.no_grad():
        for i, t in enumerate(ts):
            e, ab = model.eps(x, t, **extra), model.abar(t, x)
            abp = model.abar(ts[i + 1], x) if i + 1 < len(ts) else torch.ones_like(ab)
            x = abp.sqrt() * (x - (1 - ab).sqrt() * e) / ab.sqrt() + (1 - abp).sqrt() * e
    return x

def _ddpm(model, x, timesteps, generator=None, callback=None, extra_args=None):
    ts, extra, cm = list(timesteps), extra_args or {}, getattr(model, 'condition_mean', None)
    with torch.no_grad():
        for i, t in enumerate(ts):
            e, ab = model.eps(x, t, **extra), model.abar(t, x)
            abp = model.abar(ts[i + 1], x) if i + 1 < len(ts) else torch.ones_like(ab)
            beta = 1 - ab / abp
            x0 = (x - (1 - ab).sqrt() * e) / ab.sqrt()
            mean = abp.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - abp) / (1 - ab) * x
            var = beta * (1 - abp) / (1 - ab)
            if cm is not None: mean = cm(mean, var, x, t, **extra)
            x = mean + (var.sqrt() * torch.randn(x.shape, generator=generator, dtype=x.dtype) if i + 1 < len(ts) else 0)
    return x

from diffaug_nb import sampling as _sampling
SAMPLERS = [('stand-in', _ddpm, _ddim), ('diffaug_nb.sampling', _sampling.sample_ddpm, _sampling.sample_ddim)]


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    den = Denoiser(tiny_unet(8, 1, 8), vp_scheduler()).double().eval()
    noisy = make_guidance_classifier('noisy', width=8).double().eval()
    da = make_guidance_classifier('da', den, width=8, clamp=False).double().eval()
    with torch.no_grad(): da.net.conv_in_x0.weight.normal_()   # a denoised branch that matters
    return den, noisy, da


def _ref_grad(clf, x, t, y):
    "grad_x sum_b log softmax(clf(x, t))[b, y_b], computed here with autograd."
    xr = x.clone().requires_grad_()
    return torch.autograd.grad(clf(xr, t).log_softmax(-1)[torch.arange(len(x)), y].sum(), xr)[0]


@pytest.mark.parametrize('which', ['noisy', 'da'])
@pytest.mark.parametrize('t', [0, 250, [10, 500, 990]])
def test_guided_eps_equals_condition_score(tiny, which, t):
    "eps' = eps - sqrt(1 - abar_t) * scale * grad log p(y|x_t,t), abar from the scheduler; called under no_grad like a sampler."
    den, noisy, da = tiny
    clf = dict(noisy=noisy, da=da)[which]
    x, y, scale = torch.randn(3, 1, 8, 8, dtype=f64), torch.tensor([2, 0, 9]), 1.7
    ab = den.scheduler.alphas_cumprod.double()[torch.as_tensor(t)].reshape(-1, 1, 1, 1)
    g = _ref_grad(clf, x, t, y)
    cg = ClassifierGuidance(den, clf, scale)
    with torch.no_grad():
        e0 = den.eps(x, t)
        torch.testing.assert_close(cg.eps(x, t, y), e0 - (1 - ab).sqrt() * scale * g, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cg.score(x, t, y), -e0 / (1 - ab).sqrt() + scale * g, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(cg.x0_hat(x, t, y), (x - (1 - ab).sqrt() * (e0 - (1 - ab).sqrt() * scale * g)) / ab.sqrt(),
                                   rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(cg.eps(x, t), e0)                      # no label: unguided
        torch.testing.assert_close(ClassifierGuidance(den, clf, 0.).eps(x, t, y), e0)
    assert not x.requires_grad and all(p.grad is None for p in den.parameters())
    assert getattr(cg, 'condition_mean', None) is None                   # score form: samplers must not guide twice


def test_da_guidance_shares_the_eps_forward(tiny):
    "With a DA classifier on the same denoiser the UNet runs once per guided eps; a DA classifier on a copy runs it twice."
    den, _, da = tiny
    calls = []
    h = den.unet.register_forward_hook(lambda *a: calls.append(1))
    x, y = torch.randn(2, 1, 8, 8, dtype=f64), torch.tensor([1, 2])
    try:
        with torch.no_grad(): ClassifierGuidance(den, da, 1.).eps(x, 300, y)
        assert len(calls) == 1
        calls.clear()
        other = Denoiser(den.unet, den.scheduler).double()        # same weights, another object: the generic path
        with torch.no_grad(): e2 = ClassifierGuidance(other, da, 1.).eps(x, 300, y)
        assert len(calls) == 2
        with torch.no_grad(): torch.testing.assert_close(e2, ClassifierGuidance(den, da, 1.).eps(x, 300, y))
    finally: h.remove()


def test_mean_form(tiny):
    "mean form: unguided eps, condition_mean = mean + variance * scale * grad (guided-diffusion's condition_mean)."
    den, noisy, _ = tiny
    x, y, t = torch.randn(2, 1, 8, 8, dtype=f64), torch.tensor([4, 5]), 700
    mf = ClassifierGuidance(den, noisy, 3.).mean_form()
    assert isinstance(mf, MeanFormGuidance) and mf.T == den.T
    g = _ref_grad(noisy, x, t, y)
    mean, var = torch.randn_like(x), torch.rand(2, 1, 1, 1, dtype=f64)
    with torch.no_grad():
        torch.testing.assert_close(mf.eps(x, t, y=y), den.eps(x, t))
        torch.testing.assert_close(mf.condition_mean(mean, var, x, t, y=y), mean + var * 3. * g)
        torch.testing.assert_close(mf.condition_mean(mean, var, x, t), mean)
        torch.testing.assert_close(mf.abar(t, x), den.abar(t, x))


def test_ve_guided_score(tiny):
    "VE: the guided score is the score plus scale * grad log p (what the predictor-corrector reads)."
    _, noisy, _ = tiny
    den = Denoiser(tiny_unet(8, 1, 8), ve_scheduler(sigma_max=5.)).double().eval()
    x, y = torch.randn(2, 1, 8, 8, dtype=f64), torch.tensor([0, 1])
    g = _ref_grad(noisy, x, 400, y)
    with torch.no_grad():
        torch.testing.assert_close(ClassifierGuidance(den, noisy, 2.).score(x, 400, y), den.score(x, 400) + 2. * g)


def test_da_classifier_gradient_parts(tiny):
    "Fig. 17: total = d/dx + (d/dx0_hat)(dx0_hat/dx); the last term against the full Jacobian; the denoiser gets no .grad."
    den, _, da = tiny
    x, y = torch.randn(2, 1, 8, 8, dtype=f64), torch.tensor([3, 8])
    p = da_gradient_parts(da, x, 300, y)
    torch.testing.assert_close(p['total'], _ref_grad(da, x, 300, y))
    torch.testing.assert_close(p['total'], p['partial_noisy'] + p['through_denoiser'])
    torch.testing.assert_close(log_prob_grad(da, x, 300, y), p['total'])
    for b in range(2):
        J = torch.autograd.functional.jacobian(lambda z: den.x0_hat(z[None], 300)[0].flatten(), x[b]).reshape(64, 64)
        torch.testing.assert_close(p['through_denoiser'][b].flatten(), J.T @ p['partial_denoised'][b].flatten())
    xr = x.clone().requires_grad_()
    assert (p['total'] - torch.autograd.grad(da.net(xr, 300, den.x0_hat(x, 300)).log_softmax(-1)[[0, 1], y].sum(), xr)[0]).abs().max() > 1e-6
    assert all(q.grad is None for q in den.parameters())


def test_da_architecture_and_ablation_inputs(tiny):
    "DA = noisy network + one input conv with tiny initial weights; `zero` feeds zeros to the named input only."
    den, _, _ = tiny
    torch.manual_seed(0)
    n, d = TimeCNN(width=8), TimeCNN(width=8, denoised_input=True)
    pn, pd_ = dict(n.named_parameters()), dict(d.named_parameters())
    assert set(pd_) - set(pn) == {'conv_in_x0.weight', 'conv_in_x0.bias'} and all(pn[k].shape == pd_[k].shape for k in pn)
    assert pd_['conv_in_x0.weight'].std() < 2e-3 * pd_['conv_in.weight'].std() and (pd_['conv_in_x0.bias'] == 0).all()
    da = DAClassifier(d, den).double()
    seen = {}
    da.net.register_forward_hook(lambda m, args, kw=None: seen.update(x=args[0], x0=args[2]))
    x = torch.randn(2, 1, 8, 8, dtype=f64)
    for zero, xz, x0z in [(None, False, False), ('noisy', True, False), ('denoised', False, True)]:
        da(x, 100, zero=zero)
        assert (seen['x'] == 0).all() == xz and (seen['x0'] == 0).all() == x0z
    torch.testing.assert_close(seen['x'], x)
    with pytest.raises(ValueError, match="zero must be"): da(x, 100, zero='both')
    assert not any(k.startswith('denoiser') for k in da.state_dict())


# --- the exact Gaussian mixture ---------------------------------------------------------------------------------------
MEANS, STD = torch.tensor([[-0.5, 0.], [0.5, 0.2]], dtype=f64), 0.15

def _diffused_mixture(den, t, weights=(0.5, 0.5)):
    "p_t as a torch.distributions mixture (an independent reference for the score and the classifier)."
    ab = den.scheduler.alphas_cumprod.double()[t]
    sd = (ab * STD**2 + 1 - ab).sqrt()
    return MixtureSameFamily(Categorical(torch.tensor(weights, dtype=f64)), Independent(Normal(ab.sqrt() * MEANS, sd), 1))

@pytest.mark.parametrize('t', [0, 100, 500, 999])
def test_mixture_exact_score_and_classifier(t):
    gm = GaussianMixtureDenoiser(MEANS, STD, vp_scheduler(), weights=torch.tensor([0.3, 0.7], dtype=f64))
    ref = _diffused_mixture(gm, t, (0.3, 0.7))
    x = torch.randn(7, 2, dtype=f64).requires_grad_()
    score = torch.autograd.grad(ref.log_prob(x).sum(), x)[0]
    x = x.detach()
    torch.testing.assert_close(gm.score(x, t), score, rtol=1e-8, atol=1e-8)
    comp = ref.component_distribution.log_prob(x[:, None]) + ref.mixture_distribution.logits.log_softmax(-1)
    torch.testing.assert_close(gm.classifier()(x, t).log_softmax(-1), comp.log_softmax(-1))
    torch.testing.assert_close(gm.class_logits(x, t).logsumexp(-1), ref.log_prob(x))

@pytest.mark.parametrize('impl', [s[0] for s in SAMPLERS])
def test_guided_sampling_draws_the_chosen_component(impl):
    "Exact score + exact classifier at scale 1: DDIM and ancestral DDPM (score and mean form) sample N(mu_y, s^2 I)."
    _, ddpm, ddim = next(s for s in SAMPLERS if s[0] == impl)
    gm = GaussianMixtureDenoiser(MEANS, STD, vp_scheduler())
    guide = ClassifierGuidance(gm, gm.classifier(), 1.0)
    g = torch.Generator().manual_seed(0)
    xT = torch.randn(800, 2, generator=g, dtype=f64)
    ts100 = torch.linspace(999, 0, 100).round().long().tolist()
    right = lambda v: (v[:, 0] > 0).double().mean().item()
    free = ddim(gm, xT, ts100)
    assert 0.4 < right(free) < 0.6
    for y, v in [(0, ddim(guide, xT, ts100, extra_args=dict(y=0))),
                 (1, ddim(guide, xT, ts100, extra_args=dict(y=torch.ones(800, dtype=torch.long)))),
                 (1, ddpm(guide, xT, range(999, -1, -1), generator=g, extra_args=dict(y=1))),
                 (0, ddpm(guide.mean_form(), xT, range(999, -1, -1), generator=g, extra_args=dict(y=0)))]:
        assert right(v) == pytest.approx(float(y), abs=0.01)
        torch.testing.assert_close(v.mean(0), MEANS[y], atol=0.03, rtol=0)
        torch.testing.assert_close(v.std(0), torch.full((2,), STD, dtype=f64), atol=0.03, rtol=0)

def test_guided_pc_ve_mixture():
    "VE predictor-corrector with the guided score draws from the chosen component."
    gm = GaussianMixtureDenoiser(MEANS, STD, ve_scheduler(sigma_min=0.01, sigma_max=3.))
    g = torch.Generator().manual_seed(0)
    xT = 3. * torch.randn(800, 2, generator=g, dtype=f64)
    v = _sampling.sample_pc(ClassifierGuidance(gm, gm.classifier(), 1.0), xT, range(999, -1, -5), generator=g, extra_args=dict(y=1))
    assert (v[:, 0] > 0).double().mean().item() > 0.99
    torch.testing.assert_close(v.mean(0), MEANS[1], atol=0.03, rtol=0)


def test_accuracy_functions_share_draws_and_match_bayes():
    "Table 3 draws are the same for every classifier; the exact classifier's accuracy equals its Bayes accuracy by hand."
    gm = GaussianMixtureDenoiser(MEANS, STD, vp_scheduler())
    g = torch.Generator().manual_seed(1)
    y = torch.arange(300) % 2
    x = (MEANS[y] + STD * torch.randn(300, 2, generator=g, dtype=f64) + 1) / 2     # handed over as [0,1] (to_unit)
    seen = []
    rec = lambda xt, tt: seen.append((xt.clone(), tt.clone())) or gm.class_logits(xt, tt)
    acc = guidance_accuracy({'a': rec, 'b': rec}, gm, x, y, seed=3, device='cpu', batch_size=128)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(seen[:3], seen[3:]))
    xt, tt = diffused_draws(gm, x, None, seed=3)
    assert torch.equal(torch.cat([s[1] for s in seen[:3]]), tt) and tt.min() >= 0 and tt.max() <= 999 and len(tt.unique()) > 100
    assert acc['a'] == acc['b'] == (gm.class_logits(xt, tt).argmax(-1) == y).double().mean().item()
    curve = accuracy_vs_t({'exact': gm.classifier()}, gm, x, y, ts=(0, 999), device='cpu')
    assert curve.loc[0, 'exact'] == 1.0 and abs(curve.loc[999, 'exact'] - 0.5) < 0.1


def test_input_ablation_keys_and_values(tiny):
    den, _, _ = tiny
    torch.manual_seed(0)
    da = DAClassifier(TimeCNN(width=8, denoised_input=True), den).double()
    x, y = torch.rand(12, 1, 8, 8, dtype=f64), torch.arange(12) % 10
    ab = input_ablation(da, x, y, device='cpu')
    assert set(ab) == {'both inputs', 'zero noisy', 'zero denoised'}
    xt, tt = diffused_draws(den, x, None, seed=0)
    with torch.no_grad():
        assert ab['zero denoised'] == (da(xt, tt, zero='denoised').argmax(-1) == y).double().mean().item()


# --- training and the cache ------------------------------------------------------------------------------------------
class Interrupt(Exception): pass

@pytest.mark.parametrize('kind', ['noisy', 'da'])
def test_training_resumes_to_the_same_weights(kind, tmp_path):
    den = Denoiser(tiny_unet(8, 1, 8), vp_scheduler()).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    kw = dict(steps=8, batch_size=8, ckpt_every=3, progress=False, device='cpu', seed=5)
    def run(out_dir, callback=None):
        torch.manual_seed(0)
        m = make_guidance_classifier(kind, den, width=8, n_classes=3)
        h = fit_guidance_classifier(m, den, x, y, out_dir=out_dir, callback=callback, **kw)
        return m, h
    full, hf = run(tmp_path/'a')
    def stop(info):
        if info['step'] == 5: raise Interrupt
    with pytest.raises(Interrupt): run(tmp_path/'b', stop)
    resumed, hr = run(tmp_path/'b')
    assert hr['loss'] == hf['loss']
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()): assert torch.equal(a, b), k
    with pytest.raises(ValueError, match='different run'):
        fit_guidance_classifier(make_guidance_classifier(kind, den, width=8, n_classes=3), den, x, y, out_dir=tmp_path/'b',
                                **{**kw, 'steps': 9})

def test_ema_weights_are_returned():
    "The returned weights are the EMA of the iterates, not the last iterate (decay 0.5: visibly different)."
    den = Denoiser(tiny_unet(8, 1, 8), vp_scheduler()).eval()
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 2
    last = {}
    torch.manual_seed(0); m = make_guidance_classifier('noisy', width=8, n_classes=2)
    fit_guidance_classifier(m, den, x, y, steps=5, batch_size=8, ema_decay=0.5, progress=False, device='cpu',
                            callback=lambda i: last.update({k: v.clone() for k, v in m.state_dict().items()}))
    assert any(not torch.equal(last[k], v) for k, v in m.state_dict().items())

def test_cache_keys_and_reload(tmp_path):
    den = Denoiser(tiny_unet(28, 1, 8), vp_scheduler()).eval()
    den2 = Denoiser(tiny_unet(28, 1, 8), vp_scheduler()).eval()
    kw = dict(width=8, steps=2, batch_size=4, cache_dir=tmp_path, device='cpu', progress=False)
    da = get_guidance_classifier('da', den, **kw)
    assert isinstance(da, DAClassifier) and da.denoiser is den and (da.path/'provenance.json').exists()
    again = get_guidance_classifier('da', den, train_if_absent=False, **kw)
    for a, b in zip(da.state_dict().values(), again.state_dict().values()): assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match='no cached guidance classifier'):
        get_guidance_classifier('da', den2, train_if_absent=False, **kw)          # another score model: another key
    assert not guidance_dir(tmp_path, kind='da', denoiser=den2, width=8, steps=2, batch_size=4).exists()   # no folder left behind
    with pytest.raises(FileNotFoundError): get_guidance_classifier('noisy', den, train_if_absent=False, **kw)
    assert guidance_dir(tmp_path, kind='da', denoiser=den) != guidance_dir(tmp_path, kind='da', denoiser=den, clamp=False)
    with pytest.raises(ValueError, match='unknown guidance-classifier parameter'): guidance_params('da', den, epochs=2)
    with pytest.raises(ValueError, match="kind must be one of"): guidance_params('clean', den)


# --- guided sampling on images and the Table 4 hook ------------------------------------------------------------------
def test_guided_samples_and_table(tiny):
    den = Denoiser(tiny_unet(8, 1, 8), vp_scheduler()).eval()
    torch.manual_seed(0)
    clfs = {'none': None, 'noisy': make_guidance_classifier('noisy', width=8).eval(), 'da': make_guidance_classifier('da', den, width=8).eval()}
    smp = {'DDIM-4': ('score', lambda m, x, ts, gen, extra: _ddim(m, x, ts, generator=gen, extra_args=extra), 4),
           'DDPM-4': ('mean', lambda m, x, ts, gen, extra: _ddpm(m, x, ts, generator=gen, extra_args=extra), 4)}
    got = []
    tab, samples = guidance_table(den, clfs, smp, n=6, n_classes=3, seed=2, shape=(1, 8, 8), device='cpu', return_samples=True,
                                  metrics=lambda x, y: got.append(y.tolist()) or dict(fid=0.),
                                  reference=lambda x: F.one_hot(torch.tensor([0, 1, 2, 2, 1, 0]), 10).float())
    assert len(tab) == 6 and got[0] == [0, 1, 2, 0, 1, 2] and 'fid' in tab
    assert tab['class_share'].tolist() == [pytest.approx(4 / 6)] * 6     # predictions 0,1,2,2,1,0 against requests 0,1,2,0,1,2
    assert (tab.loc[tab.classifier == 'none', 'scale'] == 0).all()
    # the unguided rows equal a direct sampler call from the same x_T
    xT = torch.randn((6, 1, 8, 8), generator=torch.Generator().manual_seed(2))
    ref = ((_ddim(den, xT, ddim_timesteps(1000, 4)) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(samples[('none', 'DDIM-4')], ref)
    # guided DDIM differs from unguided before the final clamp
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    cg = ClassifierGuidance(den, clfs['noisy'], 5.)
    with torch.no_grad(): assert not torch.allclose(cg.eps(xT, 500, y), den.eps(xT, 500))


# --- Table 4's metrics, the scale sweep, the table and the claims ------------------------------------------------------
class _Judge(torch.nn.Module):
    "A stand-in reference classifier: features = the first 6 pixels, logits = a fixed linear map of them."
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(6, 3)
    def features(self, x): return x.flatten(1)[:, :6]
    def forward(self, x): return self.head(self.features(x))


def test_guidance_metrics_against_prdc_by_requested_class():
    "Class-conditional P/R/D/C = prdc within each *requested* class, averaged; the rest as the metrics module computes it."
    import numpy as np
    from prdc import compute_prdc
    from diffaug_nb.metrics import fid, ClassifierFeatures
    from diffaug_nb.guidance import GuidanceMetrics
    torch.manual_seed(0)
    judge = _Judge().eval()
    g = torch.Generator().manual_seed(0)
    xr, yr = torch.rand(60, 1, 4, 4, generator=g), torch.arange(60) % 3
    xf, yf = torch.rand(45, 1, 4, 4, generator=g) * 0.8, torch.arange(45) % 3
    out = GuidanceMetrics(judge, xr, yr, k=3)(xf, yf)
    fr, ff = xr.flatten(1)[:, :6].double().numpy(), xf.flatten(1)[:, :6].double().numpy()
    per = [compute_prdc(fr[yr.numpy() == c], ff[yf.numpy() == c], nearest_k=3) for c in range(3)]
    for m in ('precision', 'recall', 'density', 'coverage'):
        assert out[f'{m}_cw'] == pytest.approx(np.mean([p[m] for p in per]), abs=1e-12), m
        assert out[m] == pytest.approx(compute_prdc(fr, ff, nearest_k=3)[m], abs=1e-12), m
    assert out['fid'] == pytest.approx(fid(xr, xf, ClassifierFeatures(judge)), rel=1e-9)
    with torch.no_grad(): assert out['class_share'] == (judge(xf).argmax(-1) == yf).double().mean().item()
    assert out['n_classes_cw'] == 3


def test_default_samplers_respace_ddpm():
    from diffaug_nb.guidance import default_guidance_samplers
    assert list(default_guidance_samplers()) == ['DDIM-50', 'DDPM'] and default_guidance_samplers()['DDPM'][2] is None
    s = default_guidance_samplers(20, 100)
    assert list(s) == ['DDIM-20', 'DDPM-100'] and s['DDPM-100'][0] == 'mean' and s['DDPM-100'][2] == 100


def test_scale_sweep_shares_the_unguided_row():
    from diffaug_nb.guidance import scale_sweep
    den = Denoiser(tiny_unet(8, 1, 8), vp_scheduler()).eval()
    torch.manual_seed(0)
    clfs = {'noisy': make_guidance_classifier('noisy', width=8).eval(), 'da': make_guidance_classifier('da', den, width=8).eval()}
    smp = ('score', lambda m, x, ts, gen, extra: _ddim(m, x, ts, generator=gen, extra_args=extra), 3)
    calls = []
    sw = scale_sweep(den, clfs, [4, 0, 1.5], smp, 'D3', n=3, n_classes=3, shape=(1, 8, 8), device='cpu',
                     metrics=lambda x, y: calls.append(x) or dict(m=x.mean().item()))
    assert list(zip(sw.classifier, sw.scale)) == [('none', 0.), ('noisy', 1.5), ('da', 1.5), ('noisy', 4.), ('da', 4.)]
    assert (sw.sampler == 'D3').all() and len(calls) == 5
    ref = guidance_table(den, {'none': None}, {'D3': smp}, n=3, n_classes=3, shape=(1, 8, 8), device='cpu', return_samples=True)[1]
    torch.testing.assert_close(calls[0], ref[('none', 'D3')])
    with pytest.raises(ValueError, match='>= 0'): scale_sweep(den, clfs, [-1, 1], smp)


def test_table4_long_and_claims():
    import pandas as pd
    from diffaug_nb.guidance import table4_long, guidance_claims, TABLE4_COLUMNS
    rows = pd.DataFrame([dict(classifier=c, sampler='S', seed=sd, fid=f[sd], density_cw=d[sd], coverage_cw=.5, extra=1.)
                         for c, f, d in (('noisy', (3., 3.), (.5, .5)), ('DA', (2., 4.5), (.6, .7))) for sd in (0, 1)])
    long = table4_long(rows)
    assert list(dict.fromkeys(long.metric)) == [TABLE4_COLUMNS[k] for k in ('fid', 'density_cw', 'coverage_cw')]
    assert len(long) == 4 * 3 and set(long.columns) == {'classifier', 'sampler', 'seed', 'metric', 'value'}
    acc = pd.DataFrame(dict(seed=[0, 0], classifier=['noisy', 'DA'], accuracy=[.5, .4]))
    cl = guidance_claims(acc, long)
    assert cl.holds.tolist() == [False, False, False]        # DA less accurate; FID 3.25 vs 3; coverage equal, so D and C fails
    assert cl.every_seed.tolist() == [False, False, False]
    rows.loc[rows.classifier == 'DA', 'coverage_cw'] = .6
    cl = guidance_claims(acc.assign(accuracy=[.4, .5]), table4_long(rows)).set_index('claim')
    assert cl.holds.tolist() == [True, False, True] and cl.every_seed.tolist() == [True, False, True]   # FID: DA wins seed 0 only
    with pytest.raises(ValueError, match='none of the Table 4 metrics'): table4_long(rows[['classifier', 'sampler', 'seed', 'extra']])
