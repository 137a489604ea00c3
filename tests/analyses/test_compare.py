"""Representation-space comparison (Nash et al. 2019, Table 1 / Fig. 2): exact 1NN, table arithmetic, pipeline."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from invkeras import artifacts
from invkeras.cli import app
from invkeras.analyses.compare import (
    METHODS,
    distance_table,
    gather_examples,
    l1_distances,
    l1_to_reference,
    nearest_neighbours,
    per_image_distances,
    standard_error,
)
from invkeras.errors import InvkerasError


def _chunks(array, size):
    for start in range(0, len(array), size):
        yield array[start : start + size]


def test_streamed_nearest_neighbours_equal_brute_force_with_ties():
    rng = np.random.default_rng(3)
    # Small integer features: exact float sums and many equal distances.
    train = rng.integers(0, 3, size=(37, 2, 2, 3)).astype(np.float32)
    train[20] = train[4]  # a duplicate: the tie must go to the lower index, 4
    train[33] = train[12]
    queries = np.concatenate([train[[4, 12, 30]], rng.integers(0, 3, size=(6, 2, 2, 3)).astype(np.float32)])

    brute = np.abs(queries.reshape(9, 1, -1) - train.reshape(1, 37, -1)).sum(-1)
    order = np.argsort(brute, axis=1, kind="stable")[:, :5]  # ties -> lowest index first
    # Chunks of 5 (not dividing 37) and query blocks of a few rows exercise both loops.
    d, i = nearest_neighbours(queries, _chunks(train, 5), k=5, block_elements=60)
    np.testing.assert_array_equal(i, order)
    np.testing.assert_array_equal(d, np.take_along_axis(brute, order, 1))
    assert list(i[:3, 0]) == [4, 12, 30] and np.all(d[:3, 0] == 0)
    assert i[0, 1] == 20 and i[1, 1] == 33  # the duplicates come right after
    np.testing.assert_array_equal(l1_distances(queries, train, block_elements=1), brute)

    # k larger than the candidate set: all of them, sorted.
    d_all, i_all = nearest_neighbours(queries[:2], _chunks(train[:3], 2), k=10)
    assert i_all.shape == (2, 3)
    # Gathering rows back in streaming order.
    batches = [{"x": chunk} for chunk in _chunks(train, 5)]
    np.testing.assert_array_equal(gather_examples(batches, i[:2, :3]), train[i[:2, :3]])


def test_table_arithmetic():
    h = np.array([[0.0, 0.0], [1.0, 1.0]])
    samples_h = np.array([[[1.0, 2.0], [0.5, 0.0], [3.0, 3.0]], [[1.0, 1.0], [2.0, 0.0], [1.0, 4.0]]])
    sample_d = l1_to_reference(h, samples_h)
    np.testing.assert_allclose(sample_d, [[3.0, 0.5, 6.0], [0.0, 2.0, 3.0]])

    per_image = per_image_distances(np.array([1.0, 2.0]), sample_d)
    assert list(per_image) == list(METHODS)
    np.testing.assert_allclose(per_image["IM-S"], [3.0, 0.0])  # the first (random) sample
    np.testing.assert_allclose(per_image["IM-NN"], [0.5, 0.0])  # the best of K
    random_d = np.random.default_rng(0).exponential(size=(50, 7))
    random_images = per_image_distances(np.zeros(50), random_d)
    assert np.all(random_images["IM-NN"] <= random_images["IM-S"])

    assert standard_error(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(np.sqrt(5 / 3) / 2)
    rows = distance_table({"1NN": np.array([1.0, 2.0, 3.0, 4.0])}, feature_dims=2)
    assert rows == [{"method": "1NN", "n": 4, "mean_l1": 2.5, "se": pytest.approx(0.6454972),
                     "mean_l1_per_dim": 1.25, "se_per_dim": pytest.approx(0.3227486)}]


def test_compare_pipeline_on_tiny_inverter(tiny_inverters, tmp_path):
    inverter = tiny_inverters["fc3"].model_path.parent
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, [
        "compare", "--inverter", str(inverter), "--num-images", "4", "--num-samples", "2", "--top-k", "2",
        "--grid-samples", "4", "--grid-inputs", "2", "--batch-size", "8", "--max-train-examples", "600",
        "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    for method in METHODS:
        assert method in result.output

    report = json.loads((out / "compare.json").read_text())
    assert report["layer"] == "fc3" and report["n_images"] == 4 and report["training_examples_searched"] == 600
    assert [r["method"] for r in report["rows"]] == list(METHODS)
    for row in report["rows"]:
        assert row["n"] == 4 and np.isfinite(row["mean_l1"]) and np.isfinite(row["se"]) and row["mean_l1"] >= 0
    assert (out / "compare.csv").read_text().splitlines()[0].startswith("method,n,mean_l1,se")
    for name in ("compare.json", "compare.csv", "compare.npz", "compare_topk.png"):
        assert artifacts.is_complete(out / name), name

    # The 1NN distances are those of an exact search of the first 600 training features.
    with np.load(out / "compare.npz") as saved:
        arrays = {k: saved[k] for k in saved.files}
    from invkeras.analyses.compare import training_features
    from invkeras.analyses.samples import held_out_inputs

    meta = artifacts.read_metadata(inverter / "inverter.keras")
    h = held_out_inputs(meta, "test", 4)["h"]
    train_h = training_features(meta).load_all(600)["h"]
    brute = np.abs(h[:, None] - train_h[None]).sum(-1)
    np.testing.assert_allclose(arrays["distance_1NN"], brute.min(1), rtol=1e-5)
    assert np.all(arrays["distance_IM_NN"] <= arrays["distance_IM_S"])
    assert arrays["sample_distance"].shape == (4, 2)

    # Fig. 2 grid: 2 rows of original | 2 samples | gap | 2 neighbours, 20 px, padding 2, wide gap after the first.
    width, height = Image.open(out / "compare_topk.png").size
    assert height == 2 * (2 * 20 + 3 * 2) and width == 2 * (6 * 20 + 7 * 2 + 6)


def test_inverter_without_classifier_is_one_line_error(tiny_inverters, tmp_path):
    source = tiny_inverters["fc3"].model_path
    copy = tmp_path / "user" / "inverter.keras"
    copy.parent.mkdir()
    shutil.copy(source, copy)
    meta = artifacts.read_metadata(source)
    meta["data"] = {"features": "mine.npz"}
    artifacts.write_json_atomic(artifacts.metadata_path(copy), meta)
    result = CliRunner().invoke(app, ["compare", "--inverter", str(copy.parent)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "user features" in lines[0], result.output

    from invkeras.analyses.compare import compare_representations

    with pytest.raises(InvkerasError, match="unconditional"):
        compare_representations(tiny_inverters["none"].model_path.parent, num_images=2)
