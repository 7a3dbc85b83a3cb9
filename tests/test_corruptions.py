"""The corruption suite (`diffaug_nb.corruptions`): the contract for every corruption x severity at 28 px grey
and 224 px RGB, seeding, severity ordering, independent references, and the errors."""
import math
import numpy as np, pytest, torch
import scipy.ndimage as ndi, scipy.stats as st
import matplotlib.colors as mcolors
from PIL import Image
from diffaug_nb.corruptions import (CORRUPTIONS, FAMILIES, PARAMS, RANDOM, COLOUR, BENCHMARK, EXTRA, corrupt,
                                    corrupt_suite, corruption_figure, summarize, length_scale, synthetic_rgb,
                                    _zoom, _motion_smear, _disk_kernel, smooth_noise,
                                    plasma_fractal, rgb_to_hsv, hsv_to_rgb)
from diffaug_nb.data import load_mnist5k

SEVS = range(1, 6)
# mean |corrupted - clean| must grow with severity for these (both sizes); see the notebook for the others
MONOTONE = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'speckle_noise', 'defocus_blur', 'motion_blur',
            'zoom_blur', 'gaussian_blur', 'brightness', 'contrast', 'jpeg_compression')


@pytest.fixture(scope='module')
def x28(): return load_mnist5k('test').tensors[0][:6]

@pytest.fixture(scope='module')
def x224(): return synthetic_rgb(224, 1)


def test_registry():
    assert len(CORRUPTIONS) == 18 and list(FAMILIES) == ['noise', 'blur', 'weather', 'digital']
    assert {n for ns in FAMILIES.values() for n in ns} == set(CORRUPTIONS) == set(PARAMS)
    assert set(BENCHMARK) | set(EXTRA) == set(CORRUPTIONS) and len(BENCHMARK) == 14
    assert all(CORRUPTIONS[n] == f for f, ns in FAMILIES.items() for n in ns)


@pytest.mark.parametrize('name', list(CORRUPTIONS))
def test_contract_both_sizes(name, x28, x224):
    "Shape, dtype, [0,1], no NaN, for every severity at 28 px grey and 224 px RGB; float64 stays float64."
    for x in (x28, x224, x28[:2].double()):
        for sev in SEVS:
            y = corrupt(x, name, sev, seed=0)
            assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
            assert not y.isnan().any() and y.min() >= 0 and y.max() <= 1, (name, sev)
            if name != 'saturate' or x.shape[1] == 3:   # saturate is the identity on grey images (documented)
                assert not torch.equal(y, x), (name, sev)


@pytest.mark.parametrize('name', list(CORRUPTIONS))
def test_seeding(name, x28):
    a = corrupt(x28, name, 4, seed=7)
    assert torch.equal(a, corrupt(x28, name, 4, seed=7))
    b = corrupt(x28, name, 4, seed=8)
    if name in RANDOM:
        assert not torch.equal(a, b)
        # two copies of one image in a batch get independent draws
        two = corrupt(x28[:1].expand(2, -1, -1, -1).contiguous(), name, 4, seed=7)
        assert not torch.equal(two[0], two[1])
    else:
        assert torch.equal(a, b)
    # chunked processing: a batch's first chunk is corrupted as that chunk alone
    assert torch.equal(corrupt(x28, name, 4, seed=7, chunk=2)[:2], corrupt(x28[:2], name, 4, seed=7, chunk=2))
    assert torch.equal(corrupt(x28, name, 4, seed=7, chunk=2)[2:4], corrupt(x28[2:4], name, 4, seed=7, chunk=2)) == (name not in RANDOM)


def test_half_precision_and_empty_and_nonsquare(x224):
    xh = x224[:, :, :40, :64].half()
    for name in CORRUPTIONS:
        y = corrupt(xh, name, 3)
        assert y.dtype == torch.float16 and y.shape == (1, 3, 40, 64) and 0 <= y.min() and y.max() <= 1
    assert corrupt(x224[:0], 'fog', 2).shape == (0, 3, 224, 224)


@pytest.mark.parametrize('which', ['x28', 'x224'])
def test_severity_monotone(which, request):
    x = request.getfixturevalue(which)
    for name in MONOTONE:
        d = [(corrupt(x, name, s) - x).abs().mean().item() for s in SEVS]
        assert all(b > a for a, b in zip(d, d[1:])), (name, d)


def test_most_corruptions_are_stronger_at_5_than_1(x28, x224):
    "Across all 18, severity 5 changes the image more than severity 1, but for the documented exceptions."
    for x, exceptions in ((x28, {'elastic_transform', 'glass_blur', 'saturate', 'spatter'}),
                          (x224, {'elastic_transform', 'saturate'})):
        weaker = {n for n in CORRUPTIONS if (corrupt(x, n, 5) - x).abs().mean() <= (corrupt(x, n, 1) - x).abs().mean()}
        assert weaker <= exceptions, weaker


# ---- independent references ------------------------------------------------------------------------------

@pytest.mark.parametrize('size,power', [(28, 0.5), (224, 0.5), (28, 0.0), (28, 1.0)])
def test_gaussian_blur_vs_scipy(size, power):
    x = torch.rand(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sev, c in enumerate(PARAMS['gaussian_blur'], 1):
        sig = c * length_scale(size, power)
        ref = ndi.gaussian_filter(x.numpy(), (0, 0, sig, sig), mode='nearest', truncate=4.0)
        torch.testing.assert_close(corrupt(x, 'gaussian_blur', sev, power=power), torch.from_numpy(ref).clamp(0, 1),
                                   atol=1e-10, rtol=0)


def test_length_scale():
    assert length_scale(224) == 1 and length_scale(224, power=1) == 1
    assert math.isclose(length_scale(28), 0.125 ** 0.5) and length_scale(28, power=0) == 1
    assert math.isclose(length_scale(448), 2 ** 0.5)


def test_noise_statistics():
    flat = torch.full((8, 3, 64, 64), 0.5)
    for sev in SEVS:
        c = PARAMS['gaussian_noise'][sev - 1]
        z = ((corrupt(flat, 'gaussian_noise', sev) - 0.5) / c).flatten()
        inside = z[(z > -0.5 / c + 1e-6) & (z < 0.5 / c - 1e-6)]      # unclipped values: a truncated N(0,1)
        a = -0.5 / c
        assert st.kstest(inside.numpy(), st.truncnorm(a, -a).cdf).pvalue > 1e-3
        frac_clipped = (z.abs() >= 0.5 / c - 1e-6).float().mean().item()
        assert math.isclose(frac_clipped, 2 * st.norm.cdf(a), abs_tol=0.004)
        c = PARAMS['impulse_noise'][sev - 1]; y = corrupt(flat, 'impulse_noise', sev)
        assert math.isclose((y != 0.5).float().mean().item(), c, rel_tol=0.05)
        assert math.isclose((y == 0).float().mean().item(), c / 2, rel_tol=0.06)
    for sev in (1, 2, 3):
        c = PARAMS['shot_noise'][sev - 1]; y = corrupt(flat * 0.5, 'shot_noise', sev)
        k = (y * c).round()
        assert torch.allclose(k, y * c, atol=1e-4)                    # counts / c
        assert math.isclose(y.mean().item(), 0.25, rel_tol=0.02) and math.isclose(y.var().item(), 0.25 / c, rel_tol=0.05)
        c = PARAMS['speckle_noise'][sev - 1]; y = corrupt(flat * 0.8, 'speckle_noise', sev)
        assert math.isclose((y / 0.4 - 1).std().item(), c, rel_tol=0.02)


def test_colour_vs_matplotlib(x224):
    x = x224.double()
    hsv = mcolors.rgb_to_hsv(x[0].permute(1, 2, 0).numpy())
    for sev in SEVS:
        h = hsv.copy(); h[..., 2] = np.clip(h[..., 2] + PARAMS['brightness'][sev - 1], 0, 1)
        torch.testing.assert_close(corrupt(x, 'brightness', sev)[0].permute(1, 2, 0), torch.from_numpy(mcolors.hsv_to_rgb(h)))
        a, b = PARAMS['saturate'][sev - 1]
        h = hsv.copy(); h[..., 1] = np.clip(h[..., 1] * a + b, 0, 1)
        torch.testing.assert_close(corrupt(x, 'saturate', sev)[0].permute(1, 2, 0), torch.from_numpy(mcolors.hsv_to_rgb(h)))
    r = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(r)), r)


def test_grey_conventions(x28):
    "1 channel: brightness is min(x + c, 1) (what RGB does to grey pixels); saturate is the identity."
    for sev in SEVS:
        torch.testing.assert_close(corrupt(x28, 'brightness', sev), (x28 + PARAMS['brightness'][sev - 1]).clamp(max=1))
        assert torch.equal(corrupt(x28, 'saturate', sev), x28)
    g3 = x28[:2].expand(-1, 3, -1, -1).contiguous()
    torch.testing.assert_close(corrupt(g3, 'brightness', 3)[:, :1], corrupt(x28[:2], 'brightness', 3))


def test_contrast_formula(x224):
    for sev in SEVS:
        c = PARAMS['contrast'][sev - 1]; mu = x224.mean((2, 3), keepdim=True)
        torch.testing.assert_close(corrupt(x224, 'contrast', sev), ((x224 - mu) * c + mu).clamp(0, 1))


@pytest.mark.parametrize('size', [28, 224])
def test_pixelate_vs_pil(size, x28, x224):
    x = (x28 if size == 28 else x224.mean(1, keepdim=True))[:1]
    im = Image.fromarray(x[0, 0].numpy(), mode='F')
    for sev, f in enumerate(PARAMS['pixelate'], 1):
        n = int(size * f)
        ref = np.asarray(im.resize((n, n), Image.BOX).resize((size, size), Image.BOX)).copy()
        torch.testing.assert_close(corrupt(x, 'pixelate', sev)[0, 0], torch.from_numpy(ref), atol=1e-5, rtol=0)


def _tv_jpeg(x, q):
    "torchvision's libjpeg binding, an encoder independent of the PIL one the corruption uses."
    import warnings
    from torchvision.io import encode_jpeg, decode_jpeg
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)   # torchvision 0.29 deprecates its image codecs
        return decode_jpeg(encode_jpeg((x * 255).round().to(torch.uint8), quality=q)).float() / 255

def test_jpeg_vs_torchvision(x28, x224):
    for sev, q in enumerate(PARAMS['jpeg_compression'], 1):
        for img in (x224[0], x28[0], x28[3]):
            err = (corrupt(img[None], 'jpeg_compression', sev)[0] - _tv_jpeg(img, q)).abs()
            assert err.mean() < 1 / 255 and err.max() <= 3 / 255, (sev, err.mean().item(), err.max().item())
    y = corrupt(torch.rand(1, 2, 16, 16), 'jpeg_compression', 3)          # other channel counts: per channel, grey
    assert y.shape == (1, 2, 16, 16) and torch.equal((y * 255).round(), y * 255)


def test_zoom_vs_scipy_affine():
    x = torch.rand(1, 1, 28, 28, dtype=torch.float64)
    for z in (1.05, 1.3, 2.0):
        c = 13.5
        ref = ndi.affine_transform(x[0, 0].numpy(), np.eye(2) / z, offset=c * (1 - 1 / z), order=1, mode='nearest')
        torch.testing.assert_close(_zoom(x, z)[0, 0], torch.from_numpy(ref), atol=1e-10, rtol=0)


def test_zoom_blur_is_the_average_of_zooms(x28):
    for sev in SEVS:
        zs = np.arange(*PARAMS['zoom_blur'][sev - 1])
        ref = (x28 + sum(_zoom(x28, float(z)) for z in zs)) / (len(zs) + 1)
        torch.testing.assert_close(corrupt(x28, 'zoom_blur', sev), ref.clamp(0, 1))


def test_motion_smear_vs_scipy_map_coordinates():
    x = torch.rand(2, 1, 20, 24, dtype=torch.float64)
    angles = torch.tensor([17.0, -40.0]); radius, sigma = 3.2, 2.0
    y = _motion_smear(x, radius, sigma, angles)
    width = 2 * math.ceil(radius) + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2)); k /= k.sum()
    yy, xx = np.mgrid[:20, :24].astype(np.float64)
    for n, a in enumerate(np.deg2rad(angles.numpy())):
        ref = sum(kj * ndi.map_coordinates(x[n, 0].numpy(), [yy + j * np.sin(a), xx + j * np.cos(a)], order=1, mode='nearest')
                  for j, kj in enumerate(k))
        torch.testing.assert_close(y[n, 0], torch.from_numpy(ref), atol=1e-5, rtol=0)


def test_defocus_disk_moments():
    "A uniform disk of radius r has E[x^2 + y^2] = r^2 / 2; a Gaussian of sigma adds 2 sigma^2 (up to pixel binning)."
    for r, a in [(1.06, 0.0), (3, 0.1), (6, 0.5), (10, 0.5), (2.5, 0.7)]:
        k = _disk_kernel(r, a)
        R = k.shape[0] // 2
        t = torch.arange(-R, R + 1, dtype=torch.float64)
        m2 = (k * (t[:, None] ** 2 + t[None] ** 2)).sum().item()
        assert math.isclose(k.sum().item(), 1) and torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
        assert abs(m2 - (r * r / 2 + 2 * a * a)) < 0.3, (r, a, m2)   # binning to pixel centres moves it by < 0.3 px^2


def test_smooth_noise_std():
    "A U(-1,1) field smoothed by a Gaussian of sigma has std sqrt(1/3) / (2 sqrt(pi) sigma) (sigma >> 1)."
    for sigma in (3.0, 8.0):
        f = smooth_noise(32, 24, 24, sigma, torch.Generator().manual_seed(0))
        assert math.isclose(f.std().item(), math.sqrt(1 / 3) / (2 * math.sqrt(math.pi) * sigma), rel_tol=0.1)


def test_plasma_fractal():
    p = plasma_fractal(3, 128, 2.0, torch.Generator().manual_seed(1)).float()
    assert p.shape == (3, 128, 128) and torch.allclose(p.amin((1, 2)), torch.zeros(3)) and torch.allclose(p.amax((1, 2)), torch.ones(3))
    with pytest.raises(ValueError, match='power of two'): plasma_fractal(1, 100)


def test_elastic_moves_pixels_by_about_the_intended_amount(x224):
    "Severities 3-5 (small affine jitter): the displacement grows with alpha; large at severities 1-2 (affine)."
    d = [(corrupt(x224, 'elastic_transform', s) - x224).abs().mean().item() for s in SEVS]
    assert d[2] < d[3] < d[4] and min(d[0], d[1]) > d[4]


def test_suite_and_summary(x28):
    suite = dict(corrupt_suite(x28[:2], names='noise', severities=(2, 5), seed=4))
    assert list(suite) == [(n, s) for n in FAMILIES['noise'] for s in (2, 5)]
    assert torch.equal(suite['shot_noise', 5], corrupt(x28[:2], 'shot_noise', 5, seed=4))
    full = corrupt_suite(x28[:1])
    assert sum(1 for _ in full) == 90
    tab = summarize({k: (v - x28[:2]).abs().mean().item() for k, v in suite.items()})
    assert list(tab.index) == list(FAMILIES['noise']) + ['[noise]', '[all]']
    assert math.isclose(tab.loc['[noise]', 5], np.mean([tab.loc[n, 5] for n in FAMILIES['noise']]))


def test_errors(x28):
    with pytest.raises(ValueError, match="Valid names: gaussian_noise, shot_noise"): corrupt(x28, 'frost', 1)
    with pytest.raises(ValueError, match="Did you mean 'motion_blur'"): corrupt(x28, 'motionblur', 1)
    for bad in (0, 6, -1):
        with pytest.raises(ValueError, match=r'1\.\.5'): corrupt(x28, 'fog', bad)
    for bad in (2.5, '3', True, None):
        with pytest.raises(TypeError, match='integer'): corrupt(x28, 'fog', bad)
    assert torch.equal(corrupt(x28, 'fog', np.int64(2)), corrupt(x28, 'fog', 2))
    with pytest.raises(ValueError, match=r'\[0,1\]'): corrupt(x28 * 2 - 1, 'fog', 1)
    with pytest.raises(ValueError, match='N x C x H x W'): corrupt(x28[0], 'fog', 1)
    with pytest.raises(TypeError, match='float'): corrupt((x28 * 255).to(torch.uint8), 'fog', 1)
    with pytest.raises(TypeError, match='Tensor'): corrupt(x28.numpy(), 'fog', 1)
    for name in COLOUR:
        with pytest.raises(ValueError, match='channels'): corrupt(torch.rand(1, 2, 8, 8), name, 1)
    corrupt(torch.rand(1, 2, 8, 8), 'gaussian_blur', 1)     # non-colour corruptions take any channel count
    with pytest.raises(ValueError, match='Valid names'): corrupt_suite(x28, names=['fog', 'frosty'])
    with pytest.raises(ValueError, match=r'1\.\.5'): corrupt_suite(x28, severities=(1, 7))
    with pytest.raises(ValueError, match='one image'): corruption_figure(x28[:2])
    with pytest.raises(ValueError, match='chunk'): corrupt(x28, 'fog', 1, chunk=0)


def test_figure(x28):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig = corruption_figure(x28[0], names=['fog', 'contrast'])
    assert len(fig.axes) == 12 and fig.axes[0].get_ylabel().startswith('fog')
    plt.close(fig)
