"adversarial: the attacks attack (undefended CNN near 0 % at a large eps), robust <= clean, Square not much stronger than PGD."
import pytest, torch
from diffaug_nb.adversarial import robust_accuracy, adv_train, make_attack
from diffaug_nb.data import load_mnist5k
from diffaug_nb.train import make_classifier
from diffaug_nb.quality import reference_classifier


@pytest.fixture(scope='module')
def data():
    x, y = load_mnist5k('test').tensors
    return x[:150], y[:150]


@pytest.fixture(scope='module')
def ref():
    return reference_classifier(device='cpu', train_if_absent=False, progress=False)


@pytest.mark.parametrize('norm,eps', [('linf', 0.3), ('l2', 3.0)])
def test_undefended_falls_near_zero(ref, data, norm, eps):
    r = robust_accuracy(ref, *data, 'pgd', norm, eps, steps=20)
    assert r['clean'] > 0.9 and r['adv'] < 0.05, r
    assert r['max_dist'] <= eps * 1.001


@pytest.mark.parametrize('attack,kw', [('pgd', dict(steps=10)), ('apgd-ce', dict(steps=10)), ('square', dict(n_queries=200)),
                                       ('autoattack', dict(steps=5, n_queries=50))])
def test_robust_never_exceeds_clean(ref, data, attack, kw):
    r = robust_accuracy(ref, *data, attack, 'linf', 0.05, **kw)
    assert r['robust'] <= r['clean'] and r['adv'] <= r['clean'], r
    weaker = robust_accuracy(ref, *data, attack, 'linf', 0.02, **kw)        # a smaller ball never hurts more
    assert weaker['robust'] >= r['robust'] - 0.02, (weaker, r)


def test_square_not_much_stronger_than_pgd_on_trained_model(data):
    x, y = load_mnist5k('train').tensors
    torch.manual_seed(0); clf = make_classifier('cnn')
    adv_train(clf, x[:1200], y[:1200], method='pgd', eps=0.1, steps=5, epochs=2, batch_size=64, device='cpu', progress=False)
    pgd = robust_accuracy(clf, *data, 'pgd', 'linf', 0.1, steps=40)
    sq = robust_accuracy(clf, *data, 'square', 'linf', 0.1, n_queries=500)
    assert pgd['robust'] > 0.2, pgd                                       # training made it robust at all
    assert sq['robust'] >= pgd['robust'] - 0.05, (sq, pgd)                # else: gradient masking


def test_attack_refuses_bad_arguments():
    with pytest.raises(ValueError, match='norm'): make_attack(None, norm='l1')
    with pytest.raises(ValueError, match='eps'): make_attack(None, eps=0)
    with pytest.raises(ValueError, match='L-inf'): make_attack(None, 'trades', norm='l2')
