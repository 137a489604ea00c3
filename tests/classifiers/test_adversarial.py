"""PGD and FGSM (L-inf on [0, 1] pixels), adversarial training with exact resume, and robust
accuracy in a classifier's metadata and in the CLI's table."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from invkeras.artifacts import read_metadata
from invkeras.classifiers.adversarial import Attack, fgsm, input_gradient, perturb, pgd, robust_accuracy
from invkeras.classifiers.training import ClassifierConfig, train_classifier
from invkeras.errors import InvkerasError
from killing import Interrupt, KillAt  # tests/killing.py

TRAIN_EXAMPLES, BATCH = 256, 64
STEPS_PER_EPOCH = TRAIN_EXAMPLES // BATCH


@pytest.fixture(scope="module")
def briefly_trained():
    """A conv classifier fitted for a few epochs on procedural shapes, and 64 test images."""
    from invkeras.classifiers.architectures import build_classifier
    from invkeras.data import load_arrays

    x, y = load_arrays("procedural", "train", limit=512)
    keras.utils.set_random_seed(0)
    model = build_classifier("conv", (20, 20, 1), 4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x.astype("float32"), y, batch_size=32, epochs=10, verbose=0)
    test_x, test_y = load_arrays("procedural", "test", limit=64)
    return model, test_x.astype("float32"), test_y


def _loss(model, x, y):
    return keras.ops.convert_to_numpy(input_gradient(model, x, y)[1])


@pytest.mark.parametrize("epsilon", [0.05, 0.3])
def test_pgd_raises_the_loss_and_stays_in_the_ball_and_the_pixel_range(briefly_trained, epsilon):
    model, x, y = briefly_trained
    adversarial = pgd(model, x, y, epsilon=epsilon, steps=5, seed=1)
    assert adversarial.shape == x.shape and adversarial.dtype == np.float32
    assert np.abs(adversarial - x).max() <= epsilon * 255 + 1e-3  # the L-inf ball, in the model's 0..255 units
    assert adversarial.min() >= 0 and adversarial.max() <= 255
    assert np.abs(adversarial - x).max() > 0.5 * epsilon * 255  # it moved
    clean, attacked = _loss(model, x, y), _loss(model, adversarial, y)
    assert attacked.mean() > clean.mean() + 0.05 and (attacked > clean).mean() > 0.9
    # The attack beats a random perturbation of the same size.
    noise = np.clip(x + np.random.default_rng(0).choice([-1, 1], x.shape) * epsilon * 255, 0, 255)
    assert attacked.mean() > _loss(model, noise.astype(np.float32), y).mean()


def test_fgsm_raises_the_loss_with_one_full_step(briefly_trained):
    model, x, y = briefly_trained
    adversarial = fgsm(model, x, y, epsilon=0.1)
    moved = np.abs(adversarial - x)
    assert moved.max() <= 0.1 * 255 + 1e-3 and adversarial.min() >= 0 and adversarial.max() <= 255
    assert _loss(model, adversarial, y).mean() > _loss(model, x, y).mean()


def test_a_zero_budget_is_the_identity(briefly_trained):
    model, x, y = briefly_trained
    np.testing.assert_array_equal(pgd(model, x, y, epsilon=0.0, steps=3, seed=4), x)
    np.testing.assert_array_equal(fgsm(model, x, y, epsilon=0.0), x)


def test_the_random_start_is_a_function_of_the_seed(briefly_trained):
    model, x, y = briefly_trained
    attack = Attack(0.1, steps=2)
    a, b = (perturb(model, x[:8], y[:8], attack, seed=[0, 1, 5]) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, perturb(model, x[:8], y[:8], attack, seed=[0, 1, 6]))


def test_attack_settings():
    assert Attack(0.3, 10).step_size == pytest.approx(0.075)  # 2.5 * eps / K
    fast = Attack(0.2, steps=7, method="fgsm")
    assert (fast.steps, fast.step_size, fast.random_start) == (1, 0.2, False)
    for bad in (dict(epsilon=1.5), dict(epsilon=0.1, steps=0), dict(epsilon=0.1, method="cw")):
        with pytest.raises(InvkerasError):
            Attack(**bad)


def test_robust_accuracy_is_below_clean_accuracy(briefly_trained):
    model, x, y = briefly_trained
    clean, robust = robust_accuracy(model, x, y, Attack(0.3, 5), batch_size=32)
    assert clean > 0.4 and robust < clean - 0.2


def _config(tmp_path, **overrides) -> ClassifierConfig:
    values = dict(dataset="procedural", arch="conv", epochs=2, batch_size=BATCH, train_examples=TRAIN_EXAMPLES,
                  learning_rate=1e-3, patience=5, workspace=str(tmp_path), strategy="default", adversarial="pgd",
                  epsilon=0.1, pgd_steps=3, robust_eval_examples=128)
    return ClassifierConfig(**{**values, **overrides})


def test_config_needs_an_epsilon_for_pgd_and_records_the_step_size(tmp_path):
    with pytest.raises(ValidationError, match="needs epsilon"):
        ClassifierConfig(adversarial="pgd")
    with pytest.raises(ValidationError):
        ClassifierConfig(adversarial="fgsm", epsilon=0.3)
    config = ClassifierConfig(adversarial="pgd", epsilon=0.3, pgd_steps=10)
    assert config.pgd_step_size == pytest.approx(0.075) and config.attack().describe()["random_start"]
    assert ClassifierConfig().attack() is None and ClassifierConfig().pgd_step_size is None
    # The attack shapes a run's trajectory only when training is adversarial.
    assert "epsilon" in ClassifierConfig(epsilon=0.3).non_trajectory_fields()
    assert "epsilon" not in config.non_trajectory_fields()


def test_adversarial_training_resumes_exactly_and_reports_robust_accuracy(tmp_path):
    """Killed mid-epoch twice and resumed: the same weights as a run never interrupted (the random
    starts are drawn from the optimiser's step count, which travels with the resume state)."""
    straight = train_classifier(_config(tmp_path / "straight"), progress=False)
    killed = _config(tmp_path / "killed")
    for step in (STEPS_PER_EPOCH + 2, 2 * STEPS_PER_EPOCH - 1):
        with pytest.raises(Interrupt):
            train_classifier(killed, hooks=[KillAt(step)], progress=False)
    resumed = train_classifier(killed, progress=False)
    assert resumed.resumed_from_epoch == 1 and resumed.steps == straight.steps == 2 * STEPS_PER_EPOCH
    a, b = (keras.models.load_model(r.model_path).get_weights() for r in (straight, resumed))
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    assert resumed.robust_accuracy == straight.robust_accuracy
    # Early stopping may restore an epoch before the kills: the last epoch's losses must agree too.
    history, resumed_history = (read_metadata(r.model_path)["history"] for r in (straight, resumed))
    assert history.keys() == resumed_history.keys() and len(history["val_loss"]) == 2
    for key in history:
        np.testing.assert_allclose(resumed_history[key], history[key], rtol=1e-5)

    meta = read_metadata(resumed.model_path)
    results = meta["results"]
    assert 0 <= results["robust_accuracy"] <= 1 and 0 <= results["clean_accuracy"] <= 1
    assert results["robust_eval_examples"] == 128 and results["robust_accuracy"] <= results["clean_accuracy"]
    assert meta["adversarial"] == "pgd" and meta["attack"]["epsilon"] == 0.1 and meta["attack"]["steps"] == 3
    config = meta["config"]
    assert (config["adversarial"], config["epsilon"], config["pgd_steps"]) == ("pgd", 0.1, 3)
    assert config["pgd_step_size"] == pytest.approx(2.5 * 0.1 / 3)


def test_a_standard_classifier_reports_robust_accuracy_only_with_an_epsilon(tmp_path):
    plain = train_classifier(_config(tmp_path / "plain", adversarial="none", epsilon=None, epochs=1), progress=False)
    results = read_metadata(plain.model_path)["results"]
    assert results["robust_accuracy"] is None and results["clean_accuracy"] == results["test_accuracy"]
    assert read_metadata(plain.model_path)["adversarial"] == "none"


def test_cli_trains_a_robust_classifier_and_prints_both_accuracies(tmp_path):
    from cli_errors import assert_one_line_error
    from test_cli import invoke

    result = invoke("train-classifier", "--adversarial", "pgd", "--epsilon", 0.1, "--pgd-steps", 2, "--epochs", 1,
                    "--train-examples", 128, "--batch-size", 64, "--robust-eval-examples", 64, "--strategy", "default",
                    "--workspace", tmp_path, width=200)
    assert result.exit_code == 0, result.output
    assert "robust accuracy (PGD-2, eps 0.1)" in result.output and "clean accuracy (n=64)" in result.output
    assert "adversarial (PGD)" in result.output
    assert_one_line_error(invoke("train-classifier", "--adversarial", "pgd", "--workspace", tmp_path), "needs epsilon")
    assert_one_line_error(invoke("train-classifier", "--adversarial", "fgsm", "--epsilon", 0.1,
                                 "--workspace", tmp_path), "adversarial")
    assert_one_line_error(invoke("train-classifier", "--epsilon", 2, "--workspace", tmp_path), "epsilon")
