"""A kind defined here, in the test module, plugs into every command with no edit to them:
trained, sampled, compared and reported from a recipe, and listed by `invkeras kinds`.

The kind, `toy`, is a real (if weak) inverter: a linear decoder x_hat(h) trained with squared
error, whose samples add Gaussian pixel noise of the residual's scale, so its samples differ.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from typing import Literal

import numpy as np
import pytest
from pydantic import Field

from invkeras import artifacts
from invkeras.inverters import Inverter, InverterConfig, register_inverter
from invkeras.inverters.base import headline_summary


class ToyConfig(InverterConfig):
    kind: Literal["toy"] = "toy"
    noise: float = Field(20.0, ge=0, description="pixel noise of the samples, 0..255 units")


def _toy_network(image_shape, h_shape, learning_rate):
    import keras

    inputs = keras.Input(h_shape)
    pixels = keras.layers.Dense(int(np.prod(image_shape)))(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Reshape(image_shape)(pixels))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    return model


@register_inverter
class ToyInverter(Inverter):
    """Everything a kind needs: a config, capabilities, train, and what it can do once trained."""

    config_class, kind = ToyConfig, "toy"
    description = "a linear decoder plus pixel noise (defined in a test)"
    capabilities = frozenset({"reconstruct", "sample"})

    @classmethod
    def train(cls, config, *, hooks=(), progress=True):
        from invkeras.training import CompiledModelTrainee

        data = cls.prepare(config)
        model = _toy_network(data.image_shape, data.h_shape, config.learning_rate)

        def errors(arrays):
            predicted = model.predict(arrays["h"], verbose=0)
            return ((predicted - arrays["x"].astype("float32")) ** 2).reshape(len(predicted), -1).mean(1)

        trainee = CompiledModelTrainee(model, inputs=lambda b: b["h"], targets=lambda b: b["x"].astype("float32"),
                                       validate=lambda: {"val_loss": float(errors(data.validation).mean())})
        outcome = cls.fit(trainee, data, config, hooks=hooks, progress=progress)
        test = headline_summary("toy MSE", errors(data.test)) if data.test is not None else None
        return cls.save(model, config, data, validation=headline_summary("toy MSE", errors(data.validation)),
                        test=test, outcome=outcome)

    def reconstruct(self, h, *, batch_size=256):
        return self.model.predict(self.check_h(h, "reconstruct"), batch_size=batch_size, verbose=0)

    def sample(self, h, num_samples=1, *, seed=0, batch_size=64, **options):
        mean = self.reconstruct(h)[:, None]
        noise = np.random.default_rng(seed).normal(size=(len(mean), num_samples, *mean.shape[2:]))
        return np.clip(np.rint(mean + self.config.noise * noise), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_a_kind_defined_here_is_trained_sampled_compared_and_reported_from_a_recipe(tiny_inverters, tiny_classifier,
                                                                                     tmp_path):
    from typer.testing import CliRunner

    from invkeras.cli import app
    from invkeras.recipes import load_recipe, run_recipe
    from invkeras.reports.report import write_report

    workspace = tmp_path / "ws"
    shutil.copytree(tiny_classifier / "procedural", workspace / "procedural")
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: toy
        dataset: procedural
        workspace: {workspace}
        steps:
          toy: {{command: train-inverter, kind: toy, layer: fc3, max_steps: 30, steps_per_checkpoint: 15,
                 batch_size: 32, train_examples: 512, eval_examples: 48, noise: 30}}
          samples: {{command: sample, kind: toy, layers: [fc3], num_inputs: 3, num_samples: 4}}
          side_by_side: {{command: compare, layers: [fc3], kinds: [pixelcnn, mse, toy], num_images: 4,
                          num_samples: 3, grid_inputs: 1, grid_samples: 4, top_k: 2, max_train_examples: 128}}
    """))
    results = run_recipe(load_recipe(recipe), source=recipe)
    assert [r.status for r in results] == ["ran", "ran", "ran"]

    toy_dir = workspace / "procedural/conv/inverters/toy/fc3"
    meta = artifacts.read_metadata(toy_dir / "inverter.keras")
    assert meta["inverter_kind"] == "toy" and meta["config"]["noise"] == 30 and meta["results"]["steps"] == 30
    with np.load(toy_dir / "samples.npz") as arrays:
        assert arrays["samples"].shape == (3, 4, 20, 20, 1)

    table = json.loads((workspace / "procedural/conv/comparisons/fc3/compare.json").read_text())
    rows = {row["kind"]: row for row in table["rows"]}
    assert list(rows) == ["pixelcnn", "mse", "toy"]
    assert rows["toy"]["diversity_pixel_l1"]["mean"] > 0 == rows["mse"]["diversity_pixel_l1"]["mean"]
    assert rows["toy"]["nll_nats"] is None and 0 <= rows["toy"]["label_agreement"]["mean"] <= 1

    html = write_report(workspace, out=tmp_path / "report.html")[0].read_text()
    assert "toy MSE" in html and "toy/fc3" in html  # its inverter row and its grids, by metadata alone

    listed = CliRunner().invoke(app, ["kinds"], terminal_width=200)
    assert listed.exit_code == 0 and "toy" in listed.output and "--noise" in listed.output
    refused = CliRunner().invoke(app, ["estimate-mi", "--inverter", str(toy_dir), "--out", str(tmp_path / "mi.json")])
    assert refused.exit_code == 2 and "kind 'toy'" in refused.output
