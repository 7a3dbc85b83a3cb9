"Diffusion Denoised Smoothing and Cohen's CERTIFY/PREDICT against independent references (diffusers, scipy, closed forms)."
import math
import numpy as np, pytest, torch
from scipy.stats import beta, binomtest, norm
from diffaug_nb.diffusion import Denoiser, EmpiricalDenoiser, vp_scheduler, ve_scheduler, tiny_unet
from diffaug_nb.certify import (ABSTAIN, DDSClassifier, dds_timestep, certify, predict, sample_counts, certify_counts,
                                predict_counts, certify_set, certified_accuracy, certify_table)
from diffaug_nb.scoremodel import embedded_model_dir, is_trained


def mean_vote(z):
    "Logits: class 0 iff the image's mean brightness exceeds 1/2."
    m = z.mean((1, 2, 3))
    return torch.stack([m - 0.5, 0.5 - m], 1)


def two_flat_points(sch, a=0.8):
    return EmpiricalDenoiser(torch.stack([torch.full((1, 4, 4), a), torch.full((1, 4, 4), -a)]), sch)


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_dds_denoise_matches_diffusers_pred_original_sample(schedule):
    torch.manual_seed(0)
    sch = vp_scheduler(schedule)
    den = Denoiser(tiny_unet(), sch).eval()
    sigma = 0.5
    f = DDSClassifier(lambda z: z, den, sigma)
    ab = sch.alphas_cumprod.double().numpy()
    t = next(i for i in range(len(ab)) if math.sqrt((1 - ab[i]) / ab[i]) >= 2 * sigma)
    assert f.t == t
    x, delta = torch.rand(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    xt = math.sqrt(ab[t]) * ((2 * x - 1) + 2 * sigma * delta)  # sqrt(abar_t*) (x_m + 2 sigma delta)
    with torch.no_grad():
        eps = den.unet(xt.float(), torch.full((3,), t)).sample
        ref = torch.cat([sch.step(eps[i:i+1], t, xt[i:i+1].float()).pred_original_sample for i in range(3)])
        ours = f.denoise(x + sigma * delta)
    torch.testing.assert_close(ours, (ref.clamp(-1, 1) + 1) / 2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('sch', [vp_scheduler('cosine'), ve_scheduler()], ids=['vp-cosine', 've'])
def test_certified_radius_of_a_half_space_is_its_distance(sch):
    # the two-point exact denoiser makes f a half-space {sum(2x'-1) > 0}: the exact smoothed radius is the distance d
    emp = two_flat_points(sch)
    x, d, s, n = torch.full((1, 4, 4), 0.53), 16 * 0.06 / 8, 0.2, 5000
    c, r = certify(mean_vote, emp, x, s, n0=100, n=n, batch_size=2500, generator=torch.Generator().manual_seed(11),
                   device='cpu', progress=False)
    p = norm.cdf(d / s); sd = math.sqrt(n * p * (1 - p))
    lo, hi = (s * norm.ppf(beta.ppf(0.001, round(n * p + k * sd), n - round(n * p + k * sd) + 1)) for k in (-4, 4))
    assert c == 0 and lo <= r <= hi and r <= d


def test_constant_classifier_radius_and_predict():
    den = Denoiser(tiny_unet(), vp_scheduler('cosine')).eval()
    const = lambda z: torch.tensor([[0., 2., 1.]]).expand(len(z), 3)
    for n in (50, 777):
        c, r = certify(const, den, torch.rand(1, 8, 8), 1.0, n0=10, n=n, batch_size=100, device='cpu', progress=False)
        assert c == 1 and r == pytest.approx(norm.ppf(0.001 ** (1 / n)), abs=1e-12)
    assert predict(const, den, torch.rand(1, 1, 8, 8), 0.25, n=30, device='cpu', progress=False) == 1


def test_split_votes_abstain_and_counts_are_fair():
    emp, grey = two_flat_points(vp_scheduler()), torch.full((1, 4, 4), 0.5)
    g = torch.Generator().manual_seed(4)
    counts = sample_counts(mean_vote, emp, grey, 0.25, 3000, batch_size=1000, generator=g, device='cpu')
    assert binomtest(int(counts[0]), 3000, 0.5).pvalue > 1e-4  # fair coin
    assert certify(mean_vote, emp, grey, 0.25, n0=100, n=3000, generator=g, device='cpu', progress=False) == (ABSTAIN, 0.0)
    assert predict(mean_vote, emp, grey, 0.25, n=3000, generator=g, device='cpu', progress=False) == ABSTAIN


def test_statistics_on_counts_against_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(10, 5000)); na = int(rng.integers(0, n + 1)); alpha = float(10 ** rng.uniform(-4, -1))
        c, r = certify_counts(np.array([1, 5, 2]), np.array([n - na, na, 0]), 0.3, alpha)
        p_low = beta.ppf(alpha, na, n - na + 1) if na > 0 else 0.
        if p_low < 0.5: assert (c, r) == (ABSTAIN, 0.0)
        else: assert c == 1 and r == pytest.approx(0.3 * norm.ppf(p_low), rel=1e-9)
        k = np.array([na, n - na, 0])
        want = ABSTAIN if binomtest(max(na, n - na), n, 0.5).pvalue > alpha else int(np.argmax(k))
        if na != n - na: assert predict_counts(k, alpha) == want


@pytest.mark.parametrize('kw, msg', [(dict(sigma=-1.), '> 0'), (dict(n0=20, n=10), 'n0 <= n'), (dict(alpha=1.), 'between 0 and 1'),
                                     (dict(alpha=0.), 'between 0 and 1'), (dict(sigma=1e4), 'reaches only'),
                                     (dict(x=torch.full((1, 8, 8), float('nan'))), 'non-finite'), (dict(batch_size=0), 'positive integer')])
def test_bad_input(kw, msg):
    den = Denoiser(tiny_unet(), vp_scheduler())
    args = dict(x=torch.rand(1, 8, 8), sigma=0.5, n0=5, n=10)
    args.update(kw)
    with pytest.raises(ValueError, match=msg.replace('(', r'\(')):
        certify(lambda z: torch.zeros(len(z), 2), den, progress=False, device='cpu', **args)


def test_certify_set_rows_independent_of_batch_and_company():
    emp = two_flat_points(vp_scheduler())
    x = torch.stack([torch.full((1, 4, 4), v) for v in (0.5, 0.56, 0.4)]); y = [0, 0, 1]
    a = certify_set({'m': mean_vote}, emp, x, y, 0.25, n0=30, n=300, batch_size=64, seed=1, device='cpu', progress=False)
    b = certify_set(mean_vote, emp, x[1:], y[1:], 0.25, n0=30, n=300, batch_size=64, seed=1, idx=[1, 2], device='cpu', progress=False)
    assert a.iloc[1:][['predict', 'radius', 'n_a']].values.tolist() == b[['predict', 'radius', 'n_a']].values.tolist()
    acc = certified_accuracy(a, radii=(0., 0.1))
    assert acc.loc[('m', 'best'), 0.0] == pytest.approx(a.correct.mean())


@pytest.mark.skipif(not is_trained(embedded_model_dir()), reason='the default score model is not trained here')
def test_certify_table_on_the_committed_models():
    from diffaug_nb.scoremodel import load_denoiser
    from diffaug_nb.certify import default_classifiers
    from diffaug_nb.evaluate import count_forwards
    den, clfs = load_denoiser(device='cpu', train_if_absent=False), default_classifiers('cpu')
    with count_forwards(den.unet) as nd, count_forwards(clfs['baseline']) as nb, count_forwards(clfs['DiffAug']) as na:
        res = certify_table(clfs, den, n_images=2, sigmas=(0.25, 0.5), n0=4, n=8, batch_size=6, radii=(0., 0.25), device='cpu', progress=False)
    assert list(res['accuracy'].index) == [(m, s) for m in ('baseline', 'DiffAug') for s in ('0.25', '0.5', 'best')]
    assert len(res['rows']) == 2 * 2 * 2
    assert res['cost'].t.tolist() == [dds_timestep(den, s) for s in (0.25, 0.5)]
    # the work, counted: per image and sigma, n0 + n draws through the denoiser in batches of <= 6 (4 | 6 + 2),
    # each denoised draw shared by both classifiers (not one denoiser pass per classifier)
    draws = 2 * 2 * (4 + 8)
    assert (nd['images'], nd['calls']) == (draws, 2 * 2 * 3)
    assert nb['images'] == na['images'] == draws
    assert (res['cost'].draws_per_image * res['cost'].images).sum() == draws
