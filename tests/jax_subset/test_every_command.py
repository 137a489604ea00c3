"""Every command that trains or samples, as a CLI process under KERAS_BACKEND=jax with
TensorFlow unimportable, on the embedded procedural images.

One pipeline runs once for the module, each command reading what the one before wrote, as a
user's would: a PGD-trained classifier -> `extract` of its fc3 layer -> an autoencoder -> an
inverter of fc3 of each kind that does not have a test of its own here (mse, gan, cinn over
the autoencoder's latent) -> `compare` of the three, `sample` and `edit` of the GAN, and
`mix` and `attack` of the cINN; and `inspect` of the classifier, from its model file alone.
Everything is tiny (a few steps, 20x20 images), so the numbers say nothing about quality;
each test checks one command's outputs: files, shapes, finite values in their ranges, and the
relations that hold whatever the training (an edit of h is that edit, the MSE decoder has no
sample diversity and the GAN has some).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jax_helpers import run_python, unexpected_tf_imports

LAYER = "fc3"
H_DIM = 256  # the conv classifier's fc3
IMAGE_SHAPE = (20, 20, 1)
NUM_CLASSES = 4
SPLIT_SIZES = {"train": 20_000, "validation": 2_000, "test": 2_000}
EPSILON, PGD_STEPS, ROBUST_EVAL = 0.1, 2, 64
LATENT_DIM, AE_STEPS = 8, 20
INVERTER_STEPS = {"mse": 10, "gan": 4, "cinn": 10}
SHIFT_UNIT, SHIFT_AMOUNT, SCALE = 1, 5.0, 2.0
EDIT_INPUTS, EDIT_SAMPLES, MIX_INPUTS, COMPARE_IMAGES = 4, 2, 3, 16
SAMPLE_SEEDS, ATTACK_EPSILON, ATTACK_INPUTS = (1, 2), 0.3, 4
INSPECT_LAYERS, INSPECT_BUDGET = "logits", "2m"  # the calibration asks about 1 min per model on a loaded machine


class Pipeline:
    """The commands of one workspace, each run once in its own process; a command whose
    inputs a failed command should have written is not run, and says which."""

    def __init__(self, root: Path):
        self.root = root
        self.workspace = root / "runs"
        self.run_dir = self.workspace / "procedural" / "conv"
        self.processes: dict[str, subprocess.CompletedProcess | str] = {}

    def inverter(self, kind: str) -> Path:
        return self.run_dir / "inverters" / kind / LAYER

    def run(self, name: str, *args, needs: tuple[str, ...] = ()) -> None:
        failed = [need for need in needs if not self.ok(need)]
        if failed:
            self.processes[name] = f"not run: {', '.join(failed)} failed"
            return
        self.processes[name] = run_python(["-m", "invkeras.cli", *map(str, args)], block_tensorflow=True,
                                          tmp_path=self.root)

    def ok(self, name: str) -> bool:
        process = self.processes.get(name)
        return isinstance(process, subprocess.CompletedProcess) and process.returncode == 0

    def check(self, name: str) -> subprocess.CompletedProcess:
        """The command's process, or the test fails with what went wrong."""
        process = self.processes[name]
        if isinstance(process, str):
            pytest.fail(f"{name}: {process}")
        if process.returncode != 0:
            pytest.fail(f"{name}: {' '.join(process.args[3:])} exited {process.returncode}:\n"
                        f"{process.stdout[-3000:]}\n{process.stderr[-3000:]}")
        return process


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    p = Pipeline(tmp_path_factory.mktemp("every_command"))
    workspace = ("--workspace", p.workspace)
    p.run("train-classifier", "train-classifier", "--dataset", "procedural", "--arch", "conv", "--epochs", 1,
          "--batch-size", 64, "--train-examples", 128, "--adversarial", "pgd", "--epsilon", EPSILON,
          "--pgd-steps", PGD_STEPS, "--robust-eval-examples", ROBUST_EVAL, *workspace)
    p.run("extract", "extract", "--dataset", "procedural", "--layer", LAYER, *workspace, needs=("train-classifier",))
    p.run("train-autoencoder", "train-autoencoder", "--dataset", "procedural", "--latent-dim", LATENT_DIM,
          "--filters", 8, "--max-steps", AE_STEPS, "--steps-per-checkpoint", AE_STEPS // 2, "--batch-size", 16,
          "--train-examples", 256, "--eval-examples", 32, "--classifier", p.run_dir, *workspace,
          needs=("train-classifier",))
    autoencoder = p.workspace / "procedural" / "autoencoders" / f"latent{LATENT_DIM}"
    common = ("--dataset", "procedural", "--layer", LAYER, "--train-examples", 256, "--eval-examples", 32,
              "--batch-size", 16, *workspace)
    own = {"mse": ("--filters", 4),
           "gan": ("--scale", "tiny", "--d-steps", 1),
           "cinn": ("--autoencoder", autoencoder, "--num-blocks", 2, "--hidden", 8, "--embed-dim", 4,
                    "--init-examples", 64)}
    for kind, steps in INVERTER_STEPS.items():
        p.run(f"train-inverter {kind}", "train-inverter", "--kind", kind, *common, "--max-steps", steps,
              "--steps-per-checkpoint", steps, *own[kind],
              needs=("extract", "train-autoencoder") if kind == "cinn" else ("extract",))
    inverters = tuple(f"train-inverter {kind}" for kind in INVERTER_STEPS)
    p.run("compare", "compare", *[a for kind in INVERTER_STEPS for a in ("--inverter", p.inverter(kind))],
          "--num-images", COMPARE_IMAGES, "--num-samples", 2, "--grid-inputs", 2, "--grid-samples", 4, "--top-k", 2,
          "--max-train-examples", 256, "--batch-size", 16, "--out", p.root / "compare", needs=inverters)
    for seed in SAMPLE_SEEDS:
        p.run(f"sample {seed}", "sample", "--inverter", p.inverter("gan"), "--num-inputs", 2, "--num-samples", 2,
              "--seed", seed, "--out", p.root / f"samples-{seed}", needs=("train-inverter gan",))
    p.run("edit", "edit", "--inverter", p.inverter("gan"), "--shift", f"{SHIFT_UNIT}:{SHIFT_AMOUNT:g}",
          "--scale", SCALE, "--noise", 1, "--interpolate", "--strengths", "0,1", "--num-inputs", EDIT_INPUTS,
          "--num-samples", EDIT_SAMPLES, "--batch-size", 16, needs=("train-inverter gan",))
    p.run("mix", "mix", "--inverter", p.inverter("cinn"), "--num-inputs", MIX_INPUTS, "--batch-size", 16,
          needs=("train-inverter cinn",))
    p.run("attack", "attack", "--inverter", p.inverter("cinn"), "--epsilon", ATTACK_EPSILON, "--pgd-steps", 2,
          "--num-inputs", ATTACK_INPUTS, "--batch-size", 16, "--out", p.root / "attack", needs=("train-inverter cinn",))
    p.run("inspect", "inspect", "--model", p.run_dir / "classifier" / "model.keras", "--dataset", "procedural",
          "--layers", INSPECT_LAYERS, "--kinds", "mse", "--budget", INSPECT_BUDGET, "--out", p.root / "inspect",
          needs=("train-classifier",))
    return p


def meta(path: Path) -> dict:
    return json.loads(Path(f"{path}.meta.json").read_text())


def test_pgd_training_writes_a_jax_classifier_with_its_robust_accuracy(pipeline):
    pipeline.check("train-classifier")
    model = pipeline.run_dir / "classifier" / "model.keras"
    written = meta(model)
    assert written["versions"]["keras_backend"] == "jax" and "tensorflow" not in written["versions"]
    assert written["adversarial"] == "pgd"
    assert written["attack"]["epsilon"] == EPSILON and written["attack"]["steps"] == PGD_STEPS
    results = written["results"]
    assert results["steps"] == 2 and results["robust_eval_examples"] == ROBUST_EVAL  # 128 images, batch 64
    # the attack can only lower the accuracy on the images it is given
    assert 0 <= results["robust_accuracy"] <= results["clean_accuracy"] <= 1
    assert 0 <= results["test_accuracy"] <= 1 and np.isfinite(results["test_loss"])


def test_extract_writes_what_the_classifier_computes_at_the_layer_for_every_split(pipeline):
    pipeline.check("extract")
    from invkeras.analyses.common import reextract
    from invkeras.data import load_arrays
    from invkeras.data.features import open_features

    features = pipeline.run_dir / "features" / LAYER
    for split, size in SPLIT_SIZES.items():
        manifest = json.loads((features / split / "manifest.json").read_text())
        assert manifest["num_examples"] == size and manifest["h_shape"] == [H_DIM], split
    test = open_features(features / "test").load_all(8)
    assert test["h"].shape == (8, H_DIM) and np.isfinite(test["h"]).all()
    x, _ = load_arrays("procedural", "test", limit=8)
    np.testing.assert_array_equal(test["x"], x)  # the split, in order
    again = reextract(pipeline.run_dir / "classifier" / "model.keras", LAYER, x[:, None])[:, 0]
    np.testing.assert_allclose(test["h"], again, rtol=1e-4, atol=1e-5)
    assert test["h"].std(axis=0).max() > 0  # the images differ, so do their features


def test_train_autoencoder_reports_finite_held_out_errors_and_a_reconstruction_grid(pipeline):
    pipeline.check("train-autoencoder")
    directory = pipeline.workspace / "procedural" / "autoencoders" / f"latent{LATENT_DIM}"
    results = meta(directory / "autoencoder.keras")["results"]
    assert results["steps"] == AE_STEPS
    for split in ("validation", "test"):
        summary = results[split]
        assert 0 < summary["l1_per_pixel"] <= 255 and np.isfinite(summary["psnr_db"]), split
        assert 0 <= summary["classifier_accuracy_on_reconstructions"] <= 1, split
    grid = np.asarray(Image.open(directory / "reconstructions.png"))
    assert grid.ndim >= 2 and grid.std() > 0


@pytest.mark.parametrize("kind", list(INVERTER_STEPS))
def test_train_inverter_trains_each_kind_to_its_last_step_with_finite_held_out_scores(pipeline, kind):
    pipeline.check(f"train-inverter {kind}")
    written = meta(pipeline.inverter(kind) / "inverter.keras")
    assert written["versions"]["keras_backend"] == "jax"
    assert written["data"]["classifier"] == str(pipeline.run_dir / "classifier" / "model.keras")
    results = written["results"]
    assert results["steps"] == INVERTER_STEPS[kind]
    for split in ("validation", "test"):
        headline = results[split]["headline"]
        assert np.isfinite(headline["value"]) and np.isfinite(headline["se"]), (split, headline)
    if kind == "mse":
        assert 0 < results["test"]["mse_per_pixel"] <= 255 ** 2
    elif kind == "gan":
        assert 0 < results["test"]["pixel_l1"] <= 255
    else:
        assert results["space"] == "latent" and results["test"]["latent_dim"] == LATENT_DIM


def test_compare_scores_every_kind_and_only_the_sampling_kinds_vary(pipeline):
    pipeline.check("compare")
    out = pipeline.root / "compare"
    report = json.loads((out / "compare.json").read_text())
    assert report["n_images"] == COMPARE_IMAGES and report["feature_dims"] == H_DIM
    rows = {row["kind"]: row for row in report["rows"]}
    assert set(rows) == set(INVERTER_STEPS)
    for kind, row in rows.items():
        for score in ("IM-S", "IM-NN"):
            assert np.isfinite(row[score]["mean_l1"]) and row[score]["mean_l1"] > 0, (kind, score)
        assert row["IM-NN"]["mean_l1"] <= row["IM-S"]["mean_l1"] + 1e-6  # the nearest of K includes the first
        assert 0 <= row["label_agreement"]["mean"] <= 1, kind
        assert (out / f"compare_topk_{kind}.png").exists()
    assert rows["mse"]["diversity_pixel_l1"]["mean"] == 0  # a decoder: one image per h
    assert rows["gan"]["diversity_pixel_l1"]["mean"] > 0 and rows["cinn"]["diversity_pixel_l1"]["mean"] > 0
    with np.load(out / "compare.npz") as arrays:
        assert arrays["IM-S_gan"].shape == (COMPARE_IMAGES,) and np.isfinite(arrays["IM-S_gan"]).all()


def test_sample_draws_other_samples_of_the_same_inputs_with_another_seed(pipeline):
    draws = []
    for seed in SAMPLE_SEEDS:
        pipeline.check(f"sample {seed}")
        with np.load(pipeline.root / f"samples-{seed}" / "samples.npz") as saved:
            draws.append({k: saved[k] for k in saved.files})
    first, second = draws
    assert first["samples"].shape == (2, 2, *IMAGE_SHAPE) and first["samples"].dtype == np.uint8
    assert first["samples_h"].shape == (2, 2, H_DIM) and np.isfinite(first["samples_h"]).all()
    np.testing.assert_array_equal(first["x"], second["x"])
    np.testing.assert_array_equal(first["h"], second["h"])
    assert (first["samples"] != second["samples"]).any()


def test_edit_decodes_each_edit_of_h_and_labels_the_results(pipeline):
    pipeline.check("edit")
    out = pipeline.inverter("gan") / "edits"
    report = json.loads((out / "edits.json").read_text())
    names = [op["name"] for op in report["operations"]]
    assert names == [f"shift_{SHIFT_UNIT}_+{SHIFT_AMOUNT:g}", f"scale_{SCALE:g}", "noise_1", "interpolate"]
    with np.load(out / "edits.npz") as saved:
        a = {k: saved[k] for k in saved.files}
    h = a["h"]
    shifted, scaled, interpolated = (a[f"{name}__h"] for name in (names[0], names[1], "interpolate"))
    for name in names:
        assert a[f"{name}__h"].shape == (EDIT_INPUTS, 2, H_DIM), name
        assert a[f"{name}__samples"].shape == (EDIT_INPUTS, 2, EDIT_SAMPLES, *IMAGE_SHAPE), name
        np.testing.assert_allclose(a[f"{name}__h"][:, 0], h, atol=1e-6)  # strength 0 is h unedited
    moved = shifted[:, 1] - h
    np.testing.assert_allclose(moved[:, SHIFT_UNIT], SHIFT_AMOUNT, rtol=1e-5)
    assert np.abs(np.delete(moved, SHIFT_UNIT, axis=1)).max() < 1e-5
    np.testing.assert_allclose(scaled[:, 1], SCALE * h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(interpolated[:, 1], np.roll(h, -1, axis=0), atol=1e-5)  # to the next input's h
    samples = a["noise_1__samples"]
    assert (samples[:, :, 0] != samples[:, :, 1]).any()  # the GAN's noise: two samples of one h differ
    for op in report["operations"]:
        labels = np.asarray(op["labels"])
        assert ((0 <= labels) & (labels < NUM_CLASSES)).all(), op["name"]


def test_mix_decodes_every_residual_under_every_representation(pipeline):
    pipeline.check("mix")
    directory = pipeline.inverter("cinn")
    with np.load(directory / "mix.npz") as saved:
        a = {k: saved[k] for k in saved.files}
    assert a["mixed"].shape == (MIX_INPUTS, MIX_INPUTS, *IMAGE_SHAPE) and a["mixed"].dtype == np.uint8
    assert a["labels"].shape == (MIX_INPUTS, MIX_INPUTS)
    assert ((0 <= a["labels"]) & (a["labels"] < NUM_CLASSES)).all()
    # row A keeps A's residual; another column's h gives another image
    off_diagonal = [(i, j) for i in range(MIX_INPUTS) for j in range(MIX_INPUTS) if i != j]
    assert any((a["mixed"][i, j] != a["mixed"][i, i]).any() for i, j in off_diagonal)
    assert (directory / "mix.png").exists() and meta(directory / "mix.png")["inverter_kind"] == "cinn"


def test_attack_keeps_to_its_ball_and_decodes_the_attacked_representation(pipeline):
    pipeline.check("attack")
    out = pipeline.root / "attack"
    with np.load(out / "attack.npz") as saved:
        a = {k: saved[k] for k in saved.files}
    for key in ("x", "x_adv", "reconstruction", "decoded"):
        assert a[key].shape == (ATTACK_INPUTS, *IMAGE_SHAPE), key
    assert a["h_adv"].shape == a["h"].shape == (ATTACK_INPUTS, H_DIM) and np.isfinite(a["h_adv"]).all()
    assert np.abs(a["x_adv"] - a["x"].astype(np.float32)).max() <= ATTACK_EPSILON * 255 + 1e-3
    assert 0 <= a["x_adv"].min() and a["x_adv"].max() <= 255
    summary = json.loads((out / "attack.json").read_text())
    assert summary["attack_success_rate"] == pytest.approx(np.mean(a["labels_adv"] != a["labels_x"]))
    assert (out / "attack.png").exists()


def test_inspect_reports_on_every_chosen_layer_within_its_budget(pipeline):
    process = pipeline.check("inspect")
    out = pipeline.root / "inspect"
    html = (out / "report.html").read_text()
    for layer in INSPECT_LAYERS.split(","):
        assert f"Layer {layer}" in html, layer
        report = json.loads((out / "comparisons" / layer / "compare.json").read_text())
        assert [row["kind"] for row in report["rows"]] == ["mse"]
        assert np.isfinite(report["rows"][0]["IM-S"]["mean_l1"]), layer
        model = out / "inverters" / "mse" / layer / "inverter.keras"
        assert meta(model)["versions"]["keras_backend"] == "jax", layer
    assert "report:" in process.stdout


def test_no_command_imports_tensorflow(pipeline):
    assert all(pipeline.ok(name) for name in pipeline.processes), \
        [name for name in pipeline.processes if not pipeline.ok(name)]
    assert unexpected_tf_imports(pipeline.root) == []
