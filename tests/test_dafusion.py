"""DA-Fusion: SDEdit at strength 0, the cached copies (reused, resumable), the swap rate alpha, the 1/k strengths, the policy in
fit_classifier, classifier guidance, and Stable Diffusion's img2img pipeline on a tiny random pipeline saved here."""
import json, math
import pytest, torch
from scipy.stats import chisquare
from diffaug_nb.data import load_mnist5k
from diffaug_nb.diffusion import Denoiser, tiny_unet, vp_scheduler
from diffaug_nb.augment import sdedit, SDEdit, SyntheticSwap, SwapPolicy
from diffaug_nb.scoremodel import load_denoiser
from diffaug_nb.evaluate import count_forwards
from diffaug_nb.train import make_classifier, fit_classifier
from diffaug_nb.dafusion import (generate_copies, load_copies, dafusion_swap, copy_strengths, copy_generator, DAFUSION_STRENGTHS,
                                 SDImg2Img, tiny_sd_img2img, load_img2img_pipeline)


@pytest.fixture(scope='module')
def digits():
    x, y = load_mnist5k('train').tensors
    return x[:64], y[:64]


@pytest.fixture(scope='module')
def weak():
    "The committed 'embedded-weak' score model (it denoises well at small t)."
    return load_denoiser('embedded-weak', device='cpu', train_if_absent=False)


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return Denoiser(tiny_unet(28, 1, 8), vp_scheduler()).eval()


def test_strength_zero_returns_the_image(digits, weak):
    x = digits[0][:8]
    assert torch.equal(sdedit(weak, x, 0.0), x)
    assert torch.equal(SDEdit(weak, steps=20)(x, 0.0), x)
    # one step at t = 0 (sigma_0 ~ 0.01): almost the image
    near = sdedit(weak, x, 0.02, steps=50, generators=[torch.Generator().manual_seed(i) for i in range(8)])
    assert (near - x).abs().mean() < 0.01 and (near - x).abs().max() < 0.2
    # a real walk changes it, and strength 1 forgets it more than 0.25 does
    g = lambda: [torch.Generator().manual_seed(i) for i in range(8)]
    d25, d100 = [(sdedit(weak, x, s, steps=8, generators=g()) - x).abs().mean() for s in (0.25, 1.0)]
    assert 0 < d25 < d100


class Counting:
    "Counts the copies an augmenter is asked for."
    def __init__(self, aug): self.aug, self.n, self.model = aug, 0, getattr(aug, 'model', None)
    params = property(lambda self: self.aug.params)
    model_key = property(lambda self: getattr(self.aug, 'model_key', None))
    def forwards(self, s): return self.aug.forwards(s)
    def __call__(self, x, s, y=None, generators=None): self.n += len(x); return self.aug(x, s, y=y, generators=generators)


def test_cached_set_is_reused_not_regenerated(digits, tiny, tmp_path):
    x, y = digits[0][:5], digits[1][:5]
    aug = Counting(SDEdit(tiny, steps=8))
    with count_forwards(tiny.unet) as fw:
        path = generate_copies(aug, x, y, M=3, seed=0, chunk_size=2, cache_dir=tmp_path, model_name='tiny')
    assert aug.n == 15
    prov = json.loads((path/'provenance.json').read_text())
    assert prov['complete'] and prov['chunks'] == 3 and prov['n_real'] == 5 and prov['M'] == 3
    assert prov['forwards'] == fw['images'] > 0                         # the provenance counts what the UNet ran
    assert prov['params']['strengths'] == list(DAFUSION_STRENGTHS) and prov['model_name'] == 'tiny'
    mtimes = {f.name: f.stat().st_mtime_ns for f in path.iterdir() if f.suffix in ('.pt', '.json')}
    assert generate_copies(aug, x, y, M=3, seed=0, chunk_size=2, cache_dir=tmp_path) == path
    assert aug.n == 15                                                   # nothing regenerated
    assert {f.name: f.stat().st_mtime_ns for f in path.iterdir() if f.suffix in ('.pt', '.json')} == mtimes
    d = load_copies(path)
    assert d['copies'].shape == (5, 3, 1, 28, 28) and d['copies'].dtype == torch.uint8
    assert torch.equal(d['strength'], copy_strengths(5, 3, 4, seed=0)) and torch.equal(d['y'], y)
    # another seed or M is another set
    generate_copies(aug, x, y, M=3, seed=1, chunk_size=2, cache_dir=tmp_path)
    assert aug.n == 30


def test_generation_resumes_after_a_stop(digits, tiny, tmp_path):
    x, y = digits[0][:5], digits[1][:5]
    class Stop(Exception): pass
    def stop_after_two(p):
        if p['chunks_done'] == 2: raise Stop
    aug = Counting(SDEdit(tiny, steps=8))
    with pytest.raises(Stop):
        generate_copies(aug, x, y, M=3, seed=0, chunk_size=2, cache_dir=tmp_path/'a', on_chunk=stop_after_two)
    assert aug.n == 12
    path = generate_copies(aug, x, y, M=3, seed=0, chunk_size=2, cache_dir=tmp_path/'a')
    assert aug.n == 15                                                   # only the missing chunk (1 real image x 3 copies)
    once = generate_copies(SDEdit(tiny, steps=8), x, y, M=3, seed=0, chunk_size=2, cache_dir=tmp_path/'b')
    assert torch.equal(load_copies(path)['copies'], load_copies(once)['copies'])   # a copy does not depend on when it was made


def test_swap_probability_alpha(digits):
    x = digits[0][:10]
    copies = torch.stack([x.roll(k + 1, -1) for k in range(4)], 1)
    n = 30_000
    for alpha in (0.1, 0.5, 0.9):
        torch.manual_seed(1)
        xb = x[torch.randint(10, (n,))]
        out, mask = SyntheticSwap(x, copies, alpha)(xb, return_mask=True)
        k = int(mask.sum())
        assert abs(k - n * alpha) <= 4 * math.sqrt(n * alpha * (1 - alpha)), (alpha, k / n)   # binomial, 4 sigma
        assert torch.equal(out[~mask], xb[~mask])
        assert (out[mask] != xb[mask]).flatten(1).any(1).all()
    with pytest.raises(ValueError, match='not among the 10 real images'):
        SyntheticSwap(x, copies)(digits[0][20:22])


def test_strengths_drawn_with_probability_one_over_k():
    for k in (2, 4):
        s = copy_strengths(1000, 10, k, seed=3)
        counts = torch.bincount(s.flatten(), minlength=k)
        assert len(counts) == k and chisquare(counts.numpy()).pvalue > 1e-3, counts
    # a copy's strength is the first draw of its own generator
    assert int(torch.randint(4, (1,), generator=copy_generator(3, 7, 2))) == copy_strengths(1, 10, 4, seed=3, start=7)[0, 2]


def test_dafusion_policy_in_fit_classifier(digits, tiny, tmp_path):
    x, y = digits[0][:32], digits[1][:32]
    d = load_copies(generate_copies(SDEdit(tiny, steps=4), x, y, M=2, seed=0, cache_dir=tmp_path))
    def run():
        torch.manual_seed(0)
        m = make_classifier('cnn')
        h = fit_classifier(m, x, y, policy=SwapPolicy(dafusion_swap(d, 0.5), 'mixup', mixup_alpha=0.5), epochs=2, batch_size=16, progress=False)
        return m, h
    (a, ha), (b, hb) = run(), run()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert ha['train_loss'] == hb['train_loss']
    with pytest.raises(ValueError, match='not among the 32 real images'):   # built from other images
        fit_classifier(make_classifier('cnn'), digits[0][32:64], digits[1][32:64], policy=SwapPolicy(dafusion_swap(d)), epochs=1,
                       batch_size=16, progress=False)


def test_classifier_guidance_gets_the_labels(digits, tiny):
    from diffaug_nb.guidance import ClassifierGuidance, make_guidance_classifier
    torch.manual_seed(0)
    g = ClassifierGuidance(tiny, make_guidance_classifier('noisy', tiny, 8), scale=50.0)
    x, y = digits[0][:4], digits[1][:4]
    aug = SDEdit(g, steps=8)
    assert aug.guided and aug.params['guided']
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]
    a = aug(x, 0.5, y=y, generators=gens())
    assert a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    assert not torch.allclose(a, SDEdit(tiny, steps=8)(x, 0.5, generators=gens()))   # the guidance term moved the walk
    with pytest.raises(ValueError, match='pass the labels'):
        aug(x, 0.5)


@pytest.fixture(scope='module')
def tiny_sd(tmp_path_factory):
    pytest.importorskip('transformers', reason='Stable Diffusion needs `transformers` (pip install transformers)')
    return tiny_sd_img2img(tmp_path_factory.mktemp('sd')/'tiny-sd')


def test_stable_diffusion_img2img_pipeline(tiny_sd, digits, tmp_path):
    for sub in ('unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler'): assert (tiny_sd/sub).is_dir(), sub
    torch.save({'<digit-0>': torch.randn(16), '<digit-1>': torch.randn(16)}, tmp_path/'learned_embeds.bin')
    sd = SDImg2Img(tiny_sd, class_names=['<digit-0>', '<digit-1>'], embeddings=tmp_path/'learned_embeds.bin', steps=4, device='cpu')
    ids = sd.pipe.tokenizer('a photo of a <digit-1>').input_ids
    assert sd.pipe.tokenizer.convert_tokens_to_ids('<digit-1>') in ids          # the textual-inversion token is one token
    x, y = digits[0][:2], torch.tensor([1, 0])
    out = sd(x, 0.5, y, [copy_generator(0, i, 0) for i in range(2)])
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1 and not torch.equal(out, x)
    assert torch.equal(sd(x, 0.0, y), x)
    rgb = sd(x.expand(-1, 3, -1, -1), 0.5, y, [copy_generator(0, i, 0) for i in range(2)])
    assert rgb.shape == (2, 3, 28, 28)
    aug = Counting(sd)
    path = generate_copies(aug, x, y, M=2, strengths=(0.5, 1.0), cache_dir=tmp_path)
    assert aug.n == 4 and load_copies(path)['copies'].shape == (2, 2, 1, 28, 28)
    generate_copies(aug, x, y, M=2, strengths=(0.5, 1.0), cache_dir=tmp_path)
    assert aug.n == 4
    assert load_copies(path)['provenance']['params']['model_key'].startswith(f'sd:{tiny_sd.resolve()}+ti-')


def test_stable_diffusion_bad_paths_say_what_to_do(tmp_path):
    pytest.importorskip('transformers')
    with pytest.raises(FileNotFoundError, match='hf download CompVis/stable-diffusion-v1-4 --local-dir DIR'):
        load_img2img_pipeline('CompVis/stable-diffusion-v1-4')
    with pytest.raises(FileNotFoundError, match='no model_index.json'):
        load_img2img_pipeline(tmp_path)
