"generated: a set from the committed weak score model is cached, never redrawn, and loads as a TensorDataset."
import json
import torch
from diffaug_nb.generated import generate_set, load_generated, generated_dir
from diffaug_nb.quality import predict_probs, reference_classifier


def test_weak_model_set_is_cached_and_labelled(tmp_path):
    seen = []
    kw = dict(steps=2, chunk_size=16, threshold=0.0, cache_dir=tmp_path, progress=False, on_chunk=seen.append)
    path = generate_set('embedded-weak', 20, **kw)
    assert [s['n_chunks'] for s in seen] == [1, 2]
    assert path == generated_dir(tmp_path, model_name='embedded-weak', steps=2, chunk_size=16, threshold=0.0)
    before = {p.name: p.stat().st_mtime_ns for p in path.glob('chunk_*.pt')}
    assert generate_set('embedded-weak', 32, **kw) == path and len(seen) == 2          # present: nothing redrawn
    assert {p.name: p.stat().st_mtime_ns for p in path.glob('chunk_*.pt')} == before
    x, y = load_generated(path, 20).tensors
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y.dtype == torch.long
    prov = json.loads((path/'provenance.json').read_text())
    assert prov['n_raw'] == 32 and prov['n_kept'] == 32 and sum(prov['counts']) == 32
    assert prov['model_dir'].endswith(prov['params']['model_id']) and prov['params']['sampler'] == 'ddim'
    # label noise is the disagreement with the reference classifier, recomputed independently
    ref = reference_classifier(device='cpu', train_if_absent=False, progress=False)
    xa, ya = load_generated(path).tensors
    assert abs(prov['label_noise'] - (predict_probs(ref, xa).argmax(1) != ya).float().mean().item()) < 1e-6
