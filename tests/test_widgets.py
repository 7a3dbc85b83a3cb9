"""The t-slider explorer: set widget values as a user would and check the figures against independent references
(diffusers' own scheduler step, a numpy softmax/entropy, the exact empirical denoiser)."""
import math
import numpy as np, pytest, torch, torch.nn as nn
import plotly.graph_objects as go
from diffaug_nb.diffusion import Denoiser, EmpiricalDenoiser, tiny_unet, vp_scheduler, to_model, to_unit
from diffaug_nb import widgets as wd
from diffaug_nb.widgets import explore, fixed_noise
from diffaug_nb.plots import image_data, plot_grid


def np_softmax(z):
    z = z - z.max(-1, keepdims=True); e = np.exp(z); return e / e.sum(-1, keepdims=True)

def np_entropy(p): return -(p * np.log(np.where(p > 0, p, 1))).sum(-1)

def traces(fig): return {t.meta: t for t in fig.data}


@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    den = Denoiser(tiny_unet(8), vp_scheduler()).eval()
    clfs = {'a': nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval(),
            'b': nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()}
    x = torch.rand(3, 1, 8, 8)
    return den, clfs, x


def reference(den, clf, x, t, noise):
    "x_t, x0_hat and probabilities computed with diffusers' own add_noise / step, independently of the explorer."
    sch = den.scheduler
    tt = torch.full((len(x),), t, dtype=torch.long)
    xt = sch.add_noise(to_model(x), noise, tt)
    with torch.no_grad():
        eps = den.unet(xt, tt).sample
        x0 = torch.stack([sch.step(eps[i:i+1], t, xt[i:i+1]).pred_original_sample[0] for i in range(len(x))]).clamp(-1, 1)
        logits = clf(to_unit(x0)).numpy()
    return to_unit(xt).numpy(), to_unit(x0).numpy(), np_softmax(logits.astype(np.float64))


@pytest.mark.parametrize('t', [0, 37, 500, 999])
def test_slider_moves_images_bars_and_marker(setup, t):
    den, clfs, x = setup
    ex = explore(clfs, den, x, labels=[1, 2, 3], t=250, k=4, panels=())
    ex.t.value = t
    assert ex.last_error is None, ex.last_error
    tr = traces(ex.main)
    xt, x0, p = reference(den, clfs['a'], x, t, fixed_noise(x, 0))
    amp = 1 / math.sqrt(float(den.scheduler.alphas_cumprod[t]))   # x0_hat = (x_t - sigma eps_hat)/sqrt(abar) scales float32 rounding
    for i in range(3):
        np.testing.assert_allclose(image_data(tr[f'xt{i}']), xt[i], atol=1e-5)
        np.testing.assert_allclose(image_data(tr[f'x0{i}']), x0[i], atol=1e-5 * amp)
        top = np.argsort(-p[i])[:4]
        np.testing.assert_allclose(tr[f'bar{i}'].x, p[i, top], atol=1e-5)
        assert list(tr[f'bar{i}'].y) == [str(c) for c in top]
    np.testing.assert_allclose(tr['marker:a'].y, np_entropy(p), atol=1e-5)
    assert list(tr['marker:a'].x) == [t] * 3 and list(tr['t-line'].x) == [t, t]
    assert f't={t}' in ex.status.value


def test_marker_lies_on_curve_and_curve_is_fixed(setup):
    den, clfs, x = setup
    ex = explore(clfs, den, x, t=0, curve_step=100, panels=())
    tr = traces(ex.main)
    before = {n: np.array(tr[f'curve:b:{i}'].y) for i, n in enumerate(range(3))}
    ex.t.value = 300
    for i in range(3):
        curve = np.array(tr[f'curve:b:{i}'].y)
        np.testing.assert_array_equal(curve, before[i])  # t moved: the curve (fixed noise) did not
        assert list(tr[f'curve:b:{i}'].x)[3] == 300
        assert curve[3] == pytest.approx(tr['marker:b'].y[i], abs=1e-5)
    assert tr['uniform'].y[0] == pytest.approx(math.log(10))


def test_same_path_while_sliding_new_path_with_new_seed(setup):
    "Fixed noise: x_t(t) is one smooth path sqrt(abar_t) x0 + sigma_t eps; a new seed gives another eps."
    den, clfs, x = setup
    ex = explore(clfs['a'], den, x, t=100, panels=())
    a = image_data(traces(ex.main)['xt0'])
    ex.t.value = 101
    b = image_data(traces(ex.main)['xt0'])
    assert 0 < np.abs(a - b).max() < 0.02      # one step moves x_t a little, not a redraw of the noise
    ex.t.value = 100
    np.testing.assert_array_equal(image_data(traces(ex.main)['xt0']), a)
    ex.seed.value = 7
    c = image_data(traces(ex.main)['xt0'])
    xt, _, _ = reference(den, clfs['a'], x, 100, fixed_noise(x, 7))
    np.testing.assert_allclose(c, xt[0], atol=1e-5)
    assert np.abs(c - a).max() > 0.1


def test_classifier_menu_switches_bars(setup):
    den, clfs, x = setup
    ex = explore(clfs, den, x, t=400, k=10, panels=())
    ex.classifier.value = 'b'
    _, _, p = reference(den, clfs['b'], x, 400, fixed_noise(x, 0))
    tr = traces(ex.main)
    np.testing.assert_allclose(np.sort(tr['bar1'].x)[::-1], np.sort(p[1])[::-1], atol=1e-5)
    assert tr['marker:b'].marker.size > tr['marker:a'].marker.size


def test_de_panel_average_is_mean_of_members(setup):
    den, clfs, x = setup
    ex = explore(clfs, den, x, t=0, panels=('de',), de_ts=range(0, 451, 50))
    fw = ex.panels['de'].fig
    ex.t.value = 160
    tr = traces(fw)
    for i in range(3):
        z = np.array(tr[f'heat{i}'].z)  # rows: 10 members, DE mean, clean
        np.testing.assert_allclose(z[10], z[:10].mean(0), atol=1e-6)
        np.testing.assert_allclose(z[11], np_softmax(clfs['a'](x[i:i+1]).detach().numpy().astype(np.float64))[0], atol=1e-5)
        _, _, p = reference(den, clfs['a'], x, 150, fixed_noise(x, 0))
        np.testing.assert_allclose(z[3], p[i], atol=1e-5)   # member t=150 = the slider's view at t=150
        frame = {sh.name: sh for sh in fw.layout.shapes}[f'frame{i}:2']
        assert frame.visible and frame.y0 == 2.5             # framed row: t=150 (nearest to 160)
    ex.t.value = 800
    assert not {sh.name: sh for sh in fw.layout.shapes}['frame0:2'].visible   # outside S: nothing framed
    ex.classifier.value = 'b'
    z = np.array(traces(fw)['heat0'].z)
    np.testing.assert_allclose(z[11], np_softmax(clfs['b'](x[:1]).detach().numpy().astype(np.float64))[0], atol=1e-5)


def test_exact_denoiser_recovers_a_data_point():
    "On the empirical (exact) denoiser, a data point diffused to a small t denoises back onto itself."
    pts = torch.rand(5, 1, 8, 8)
    den = EmpiricalDenoiser(to_model(pts), vp_scheduler())
    ex = explore(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), den, pts[:2], t=20, panels=())
    tr = traces(ex.main)
    np.testing.assert_allclose(image_data(tr['x00']), pts[0].numpy(), atol=1e-4)
    ex.t.value = 999   # all signal gone: x0_hat -> the points' mean (weights ~ uniform-ish), never a data point exactly
    assert np.abs(image_data(tr['x00']) - pts[0].numpy()).max() > 1e-3


def test_images_by_index_and_errors(setup):
    den, clfs, _ = setup
    with pytest.raises(ValueError, match='resize'):
        explore(clfs['a'], den, [0, 1])            # 28-px test digits vs an 8-px denoiser
    den28 = Denoiser(tiny_unet(28), vp_scheduler()).eval()
    clf28 = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    ex = explore(clf28, den28, [4, 9], t=10, panels=())
    assert ex.names == ['test #4', 'test #9'] and ex.labels is not None
    assert 'true' in ex.main.layout.annotations[2].text


def test_callback_errors_are_shown_not_lost(setup):
    den, clfs, x = setup
    broken = {'now': False}
    def flaky(z):
        if broken['now']: raise RuntimeError('boom')
        return clfs['a'](z)
    ex = explore(flaky, den, x, t=10, panels=(), curve_step=500)
    broken['now'] = True
    ex.t.value = 20
    assert isinstance(ex.last_error, RuntimeError) and 'boom' in ex.status.value


def test_without_anywidget_falls_back_to_output(setup, monkeypatch):
    den, clfs, x = setup
    class NoAnywidget(go.Figure):
        def __init__(self, *a, **k): raise ImportError('Please install anywidget to use the FigureWidget class')
    monkeypatch.setattr(wd.go, 'FigureWidget', NoAnywidget)
    ex = explore(clfs['a'], den, x, t=10, panels=('de',))
    assert isinstance(ex.main, go.Figure)
    ex.t.value = 600
    assert ex.last_error is None, ex.last_error
    assert list(traces(ex.main)['t-line'].x) == [600, 600]


def test_slider_moves_on_a_28px_model():
    "Slider moves on a 28-px model (the embedded UNet's shape, random weights) re-render without error (timings: bench/bench_explorer.py)."
    from diffaug_nb.scoremodel import make_unet
    torch.manual_seed(0)
    den = Denoiser(make_unet(28), vp_scheduler()).eval()
    clf = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 10)).eval()
    ex = explore(clf, den, torch.rand(2, 1, 28, 28), t=0, panels=('de',), curve_step=100)
    for t in (50, 300, 500):
        ex.t.value = t
        assert ex.last_error is None, ex.last_error
        assert list(traces(ex.main)['t-line'].x) == [t, t]


def test_gradient_panel_matches_finite_differences():
    "Through the exact denoiser with a linear classifier, the gradient panel shows the (stretched) finite-difference gradient."
    torch.manual_seed(1)
    pts = torch.rand(6, 1, 8, 8)
    den = EmpiricalDenoiser(to_model(pts), vp_scheduler()).double()
    W_ = torch.randn(10, 64, dtype=torch.float64)
    clf = lambda z: z.double().flatten(1) @ W_.T
    x = pts[:1] * 0.8 + 0.1
    ex = explore(clf, den, x, labels=[3], t=200, panels=('gradient',), curve_step=500)
    assert ex.last_error is None, ex.last_error
    xt = ex.state['x_t'][0].double()                     # [0,1] units
    def logp(v):
        z = den.x0_hat(to_model(v.reshape(1, 1, 8, 8)), 200, clamp=True)
        return torch.log_softmax(clf(to_unit(z)), -1)[0, 3]
    h, g = 1e-5, np.zeros(64)
    for j in range(64):
        e = torch.zeros(64, dtype=torch.float64); e[j] = h
        g[j] = (logp(xt.flatten() + e) - logp(xt.flatten() - e)).item() / (2 * h)
    g = (g - g.min()) / (g.max() - g.min())
    lo, hi = np.percentile(g, [1, 99])
    ref = (np.clip(g, lo, hi) - lo) / (hi - lo)
    shown = image_data(traces(ex.panels['gradient'].fig)['g0:2'])
    np.testing.assert_allclose(shown.flatten(), ref, atol=1e-2)          # float32 in the explorer, float64 here
    assert np.corrcoef(shown.flatten(), ref)[0, 1] > 0.999


def test_jacobian_panel_matches_theorem_41():
    "On the exact denoiser, the singular values shown are those of sqrt(abar) Cov[x0|x_t] / sigma^2 (Thm 4.1)."
    torch.manual_seed(2)
    pts = torch.rand(5, 1, 8, 8)
    den = EmpiricalDenoiser(to_model(pts), vp_scheduler())
    ex = explore(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), den, pts[:2] * 0.9, t=50, panels=('jacobian',), jac_k=3, curve_step=500)
    ex.t.value = 400
    ex.panels['jacobian'].image.value = 1
    assert ex.last_error is None, ex.last_error
    xt = den.diffuse(to_model(pts[1:2] * 0.9), 400, fixed_noise(pts[:2], 0)[1:2])
    abar, sig = den.abar(400, xt).item(), den.sigma(400, xt).item()
    J = (den.cov_m(xt, 400)[0] / abar) * math.sqrt(abar) / sig**2      # Cov[x0|x] = Cov[m|x]/abar
    s_ref = np.linalg.svd(J.double().numpy(), compute_uv=False)[:3]
    ann = {a.name: a.text for a in ex.panels['jacobian'].fig.layout.annotations}
    shown = [float(ann[f'j:{i+1}'].split('s=')[1]) for i in range(3)]
    np.testing.assert_allclose(ex.panels['jacobian'].state['S'].numpy(), s_ref, rtol=1e-3)
    np.testing.assert_allclose(shown, s_ref, rtol=5e-3)                 # the titles show 3 digits
    assert ann['j:0'] == 'image 1 x_t, t=400'


def test_panels_own_their_widgets_and_a_new_panel_plugs_in(setup, monkeypatch):
    "Each tab is a `Panel` that owns its controls and figure; a registered subclass gets its `ts` in the explorer's one pass."
    den, clfs, x = setup
    calls = []
    class Probe(wd.Panel):
        title, ts = 'probe', (33,)
        def build(self):
            calls.append(('build', self.ex.t.value))
            return plot_grid({'x0_hat at 33': self.ex.members['a']['x0_hat'][list(self.ex.members['a']['t']).index(33)]})
        def patch(self, fig, force=False): calls.append(('patch', self.ex.t.value))
    monkeypatch.setitem(wd.PANELS, 'probe', Probe)
    ex = explore(clfs, den, x, t=10, panels=('probe', 'de', 'jacobian'), de_ts=[0, 40], jac_k=2, curve_step=500)
    assert ex.last_error is None, ex.last_error
    assert list(ex.panels) == ['probe', 'de', 'jacobian'] and ex.panel == 'probe'
    assert sorted(ex.members['a']['t']) == [0, 33, 40, 500, 999]          # curve grid + Probe.ts + DE's ts, one pass
    _, x0, _ = reference(den, clfs['a'], x, 33, fixed_noise(x, 0))
    np.testing.assert_allclose(image_data(traces(ex.figure('probe'))['1:0']), x0[1], atol=1e-5)
    ex.t.value = 20
    assert calls == [('build', 10), ('patch', 20)]
    ex.tabs.selected_index = 1; ex.t.value = 30                            # only the open tab follows the slider
    assert calls[-1] == ('patch', 20) and ex.panels['de'].fig is not None and ex.panels['jacobian'].fig is None
    jac = ex.panels['jacobian']
    assert all(w in jac.controls[0].children for w in (jac.image, jac.button, jac.follow, jac.status))
    assert not [a for a in vars(ex) if a.startswith(('jac', '_panel', '_de'))]   # the explorer holds no panel widgets
    jac.button.click()                                                     # computes at t even with its tab closed
    assert ex.last_error is None and jac.state['t'] == 30 and len(jac.state['S']) == 2
    ex.seed.value = 3                                                      # new noise: every panel starts afresh
    assert jac.fig is None and jac.state is None and calls[-1] == ('patch', 20)
    with pytest.raises(ValueError, match='unknown panel'): explore(clfs, den, x, panels=('nope',))


def test_typed_indices_swap_the_images(setup):
    den28 = Denoiser(tiny_unet(28), vp_scheduler()).eval()
    ex = explore(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), den28, [0], t=30, panels=('de',), curve_step=500)
    ex.images.value = '11 12'
    assert ex.last_error is None, ex.last_error
    from diffaug_nb.data import load_mnist5k
    x, y = load_mnist5k('test').tensors
    np.testing.assert_array_equal(ex.x.numpy(), x[[11, 12]].numpy())
    assert ex.labels.tolist() == y[[11, 12]].tolist()
    assert sorted(t.meta for t in ex.main.data if t.meta.startswith('x0')) == ['x00', 'x01']
    assert len(traces(ex.panels['de'].fig)['heat1'].z) == 12
    ex.images.value = 'nine'
    assert isinstance(ex.last_error, ValueError) and 'error' in ex.status.value


def test_explore_opens_on_the_embedded_default():
    "explore() with no arguments: the committed embedded score model and the plain cached classifier."
    from diffaug_nb.scoremodel import embedded_model_dir, is_trained
    if not is_trained(embedded_model_dir()): pytest.fail(f'the embedded score model is missing at {embedded_model_dir()}')
    ex = explore(t=0, panels=())
    assert ex.den.unet.config.sample_size == 28 and list(ex.clfs)[0] == 'plain'   # + 'DiffAug' once it is trained
    for name in ex.clfs:
        pred = ex.state['probs'][name].argmax(-1)
        assert pred.tolist() == ex.labels.tolist(), name   # trained classifiers read these clean test digits
    ex.t.value = 999
    assert (ex.state['x0_hat'] - ex.x).abs().mean() > 0.1   # at t = T-1 the digit is gone
