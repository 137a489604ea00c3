"""The cINN against a known answer: z = A h + L e (e ~ N(0, I)), so z | h ~ N(A h, L L^T) and
H(z | h) = log det(2 pi e L L^T) / 2 exactly. Trained briefly in the shared loop, its held-out
NLL must bound H(z | h) from above (up to sampling error) and come within 0.1 nats per
dimension; its samples must be as likely under the model, and under the truth, as real z."""

from pathlib import Path

import keras
import numpy as np
import pytest

from invkeras.inverters.cinn.network import build_latent_flow
from invkeras.training import CompiledModelTrainee, Schedule, train

D, K = 4, 3


def _task():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(D, K))
    chol = np.tril(rng.normal(size=(D, D)) * 0.5, -1) + np.diag([0.6, 1.0, 0.5, 0.8])
    covariance = chol @ chol.T
    entropy_per_dim = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * covariance)[1] / D

    def draw(n, seed):
        r = np.random.default_rng(seed)
        h = r.normal(size=(n, K))
        return {"z": (h @ a.T + r.normal(size=(n, D)) @ chol.T).astype("float32"), "h": h.astype("float32")}

    def true_nll_per_dim(z, h):
        diff = (z - h @ a.T).astype(np.float64)
        solved = np.linalg.solve(chol, diff.T).T
        return (0.5 * (solved**2).sum(1) + 0.5 * np.linalg.slogdet(2 * np.pi * covariance)[1]) / D

    return draw, entropy_per_dim, true_nll_per_dim


def _nll(model, arrays):
    return keras.ops.convert_to_numpy(model.flow.nll_per_dim(arrays["z"], arrays["h"])).astype(np.float64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    draw, entropy, true_nll = _task()
    train_arrays, held_out = draw(8000, 1), draw(4000, 2)
    keras.utils.set_random_seed(0)
    model = build_latent_flow(D, (K,), num_blocks=4, hidden=32, embed_dim=16, learning_rate=3e-3, lr_decay=0.998)
    model.flow.initialize(train_arrays["z"][:512], train_arrays["h"][:512])
    untrained = _nll(model, held_out)
    trainee = CompiledModelTrainee(model, inputs=lambda b: b, targets=lambda b: np.zeros(len(b["z"]), "float32"),
                                   validate=lambda: {"val_loss": float(_nll(model, held_out).mean())})
    train(trainee, train_arrays, Schedule(600, 150, 5, 128, 0), out_dir=Path(tmp_path_factory.mktemp("gt")),
          settings={}, what="ground truth", progress=False)
    return model, held_out, entropy, true_nll, untrained


def test_held_out_nll_bounds_the_true_conditional_entropy_and_comes_within_0_1_nats_per_dim(trained):
    model, held_out, entropy, _, untrained = trained
    nll = _nll(model, held_out)
    mean, se = nll.mean(), nll.std(ddof=1) / np.sqrt(len(nll))
    assert untrained.mean() > entropy + 0.3  # before training it is far off: the test can fail
    assert mean >= entropy - 3 * se, (mean, entropy, se)  # a cross-entropy bounds H(z|h) from above
    assert mean <= entropy + 0.1, (mean, entropy)


def test_samples_are_as_likely_as_real_latents(trained):
    model, held_out, entropy, true_nll, _ = trained
    h = held_out["h"]
    v = np.random.default_rng(7).standard_normal((len(h), D)).astype("float32")
    z = keras.ops.convert_to_numpy(model.flow.inverse(v, h))
    real, sampled = _nll(model, held_out).mean(), _nll(model, {"z": z, "h": h}).mean()
    assert abs(sampled - real) < 0.05, (sampled, real)
    # and under the true conditional, the samples' NLL is the true entropy: they are draws of z | h
    assert abs(true_nll(z, h).mean() - entropy) < 0.1
    # a sampler with the wrong spread is caught by the same measure
    z_wide = keras.ops.convert_to_numpy(model.flow.inverse(2 * v, h))
    assert _nll(model, {"z": z_wide, "h": h}).mean() > real + 0.3
