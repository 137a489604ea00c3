"""Representation-space comparison (Nash et al. 2019, Table 1 / Fig. 2): exact 1NN, table arithmetic,
and inverters of several kinds side by side on one layer."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from invkeras import artifacts
from invkeras.analyses.compare import (
    l1_summary,
    METHODS,
    CompareConfig,
    compare_inverters,
    default_labels,
    gather_examples,
    l1_distances,
    l1_to_inputs,
    l1_to_reference,
    label_agreement,
    nearest_neighbours,
    pairwise_l1,
    per_image_distances,
    table_csv,
)
from invkeras.errors import InvkerasError
from invkeras.stats import standard_error


def _chunks(array, size):
    for start in range(0, len(array), size):
        yield array[start : start + size]


def test_a_capped_nearest_neighbour_search_samples_the_whole_training_split():
    """`--max-train-examples` searches a fixed sample of the split, not its first N: in a
    class-sorted split the first N would hold one class only."""
    from invkeras.analyses.compare import _capped
    from invkeras.data.registry import capped_positions

    labels = np.repeat(np.arange(10), 30)  # sorted by class
    h = np.arange(300, dtype=np.float32)[:, None]
    batches = [{"h": h[s : s + 7], "y": labels[s : s + 7]} for s in range(0, 300, 7)]
    kept = list(_capped(iter(batches), 300, 40))
    kept_h = np.concatenate([b["h"] for b in kept])[:, 0]
    np.testing.assert_array_equal(kept_h, np.sort(capped_positions(300, 40)))  # the stream's order
    assert len(set(np.concatenate([b["y"] for b in kept]).tolist())) >= 8
    assert sum(len(b["h"]) for b in _capped(iter(batches), 300, None)) == 300


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
    summary = l1_summary(np.array([1.0, 2.0, 3.0, 4.0]), feature_dims=2)
    assert summary == {"mean_l1": 2.5, "se": pytest.approx(0.6454972), "mean_l1_per_dim": 1.25,
                       "se_per_dim": pytest.approx(0.3227486)}


def test_diversity_agreement_labels_and_csv_arithmetic():
    samples = np.zeros((2, 3, 2, 2, 1), np.uint8)
    samples[0, 1] = 2  # pairs of image 0: |0-2|*4 = 8, 0, 8 -> mean 16/3
    np.testing.assert_allclose(pairwise_l1(samples), [16 / 3, 0.0])
    with pytest.raises(InvkerasError, match="at least 2 samples"):
        pairwise_l1(samples[:, :1])
    inputs = np.zeros((2, 2, 2, 1), np.uint8)
    inputs[1] = 1  # image 1's samples are all 0: |0-1|*4 = 4 each
    np.testing.assert_allclose(l1_to_inputs(samples, inputs), [8 / 3, 4.0])  # image 0: (0 + 8 + 0) / 3
    np.testing.assert_allclose(label_agreement(np.array([1, 0]), np.array([[1, 1, 0], [2, 2, 2]])), [2 / 3, 0.0])
    assert default_labels(["pixelcnn", "mse", "pixelcnn", "pixelcnn"]) == ["pixelcnn", "mse", "pixelcnn-2", "pixelcnn-3"]
    text = table_csv([{"label": "a", "IM-S": {"mean_l1": 1.0, "se": 0.5}, "nll_nats": None},
                      {"label": "b", "IM-S": {"mean_l1": 2.0, "se": 0.25}, "nll_nats": {"mean": 3.0, "se": 0.1}}])
    lines = text.splitlines()
    assert lines[0] == "label,IM-S mean_l1,IM-S se,nll_nats,nll_nats mean,nll_nats se"
    assert lines[1] == "a,1.0,0.5,,," and lines[2] == "b,2.0,0.25,,3.0,0.1"


def test_config_defaults():
    config = CompareConfig(inverters=["a"])
    assert (config.num_images, config.num_samples, config.split, config.seed, config.top_k, config.grid_samples,
            config.grid_inputs, config.batch_size, config.chunk_size) == (500, 10, "test", 0, 8, 64, 4, 64, 2048)
    assert config.labels is None and config.max_train_examples is None and config.out is None
    with pytest.raises(ValueError):
        CompareConfig(inverters=[])
    with pytest.raises(ValueError):
        CompareConfig(inverters=["a"], decoder="b")


def _copy(model_path, directory, **changes):
    """A copy of an inverter whose metadata is changed: top-level keys, or "config.<field>"/"data.<field>"."""
    directory.mkdir(parents=True)
    copy = directory / model_path.name
    shutil.copy(model_path, copy)
    meta = artifacts.read_metadata(model_path)
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            meta[section] = {**(meta.get(section) or {}), name: value}
        else:
            meta[key] = value
    artifacts.write_json_atomic(artifacts.metadata_path(copy), meta)
    return copy


def test_pixelcnn_and_mse_side_by_side(tiny_inverters, tmp_path):
    pixelcnn, mse = tiny_inverters["fc3"].model_path, tiny_inverters["mse_fc3"].model_path
    out = tmp_path / "cmp"
    config = CompareConfig(inverters=[str(pixelcnn.parent), str(mse.parent)], num_images=6, num_samples=3, top_k=2,
                           grid_samples=4, grid_inputs=2, batch_size=8, max_train_examples=600, out=str(out))
    result = compare_inverters(config, progress=False)

    report = json.loads((out / "compare.json").read_text())
    assert set(report) == {"layer", "split", "n_images", "samples_per_image", "feature_dims",
                           "training_examples_searched", "distance", "nearest_training", "rows", "diversity"}
    assert report["layer"] == "fc3" and report["split"] == "test" and report["n_images"] == 6
    assert report["samples_per_image"] == 3 and report["feature_dims"] == 256
    assert report["training_examples_searched"] == 600 and report["distance"] == "L1 (sum over features)"
    assert set(report["nearest_training"]) == {"mean_l1", "se", "mean_l1_per_dim", "se_per_dim"}
    rows = {row["label"]: row for row in report["rows"]}
    assert list(rows) == ["pixelcnn", "mse"]
    assert [rows[k]["kind"] for k in rows] == ["pixelcnn", "mse"] and rows["mse"]["inverter"] == str(mse)
    for row in rows.values():
        assert set(row) == {"label", "kind", "inverter", "IM-S", "IM-NN", "label_agreement", "diversity_pixel_l1",
                            "diversity_h_l1", "pixel_l1_to_input", "nll_nats"}
        for method in ("IM-S", "IM-NN"):
            assert set(row[method]) == {"mean_l1", "se", "mean_l1_per_dim", "se_per_dim"}
            assert row[method]["mean_l1"] >= 0 and np.isfinite(row[method]["se"])
        assert row["IM-NN"]["mean_l1"] <= row["IM-S"]["mean_l1"]
        assert 0.0 <= row["label_agreement"]["mean"] <= 1.0
    # A point estimate has no diversity; PixelCNN samples do.
    assert rows["mse"]["diversity_pixel_l1"]["mean"] == 0 and rows["mse"]["diversity_h_l1"]["mean"] == 0
    assert rows["pixelcnn"]["diversity_pixel_l1"]["mean"] > 0 and rows["pixelcnn"]["diversity_h_l1"]["mean"] > 0
    # Triangle inequality through the input: the mean pairwise distance is at most twice the mean
    # distance to the input, per image and so on average (same units, same sums).
    for row in rows.values():
        assert 0 < row["pixel_l1_to_input"]["mean"] and row["diversity_pixel_l1"]["mean"] <= 2 * row["pixel_l1_to_input"]["mean"]
    assert rows["mse"]["IM-NN"] == rows["mse"]["IM-S"]  # K copies of one image
    # A pixel likelihood only where the kind has one.
    assert rows["mse"]["nll_nats"] is None and np.isfinite(rows["pixelcnn"]["nll_nats"]["mean"])
    assert result.rows == report["rows"]

    for name in ("compare.json", "compare.csv", "compare.npz", "compare_topk_pixelcnn.png", "compare_topk_mse.png"):
        assert artifacts.is_complete(out / name), name
        meta = artifacts.read_metadata(out / name)
        assert meta["kind"] == "representation-comparison" and meta["layer"] == "fc3"
        assert meta["results"]["rows"] == report["rows"] and meta["results"]["seconds"] > 0
    grid_meta = artifacts.read_metadata(out / "compare_topk_mse.png")
    assert grid_meta["label"] == "mse" and grid_meta["inverter_kind"] == "mse"
    assert (out / "compare.csv").read_text().splitlines()[0].startswith("label,kind,inverter,IM-S mean_l1,IM-S se")

    # The 1NN distances are those of an exact search of the first 600 training features.
    with np.load(out / "compare.npz") as saved:
        arrays = {k: saved[k] for k in saved.files}
    from invkeras.analyses.compare import training_features
    from invkeras.inverters import load_inverter
    from invkeras.inverters.data import held_out_inputs

    inverter_config = load_inverter(pixelcnn).config
    h = held_out_inputs(inverter_config, "test", 6)["h"]
    train_h = training_features(inverter_config).load_all(600)["h"]
    brute = np.abs(h[:, None] - train_h[None]).sum(-1)
    np.testing.assert_allclose(arrays["distance_1NN"], brute.min(1), rtol=1e-5)
    assert report["nearest_training"]["mean_l1"] == pytest.approx(float(brute.min(1).mean()), rel=1e-5)
    assert np.all(arrays["IM-NN_pixelcnn"] <= arrays["IM-S_pixelcnn"])
    assert arrays["sample_distance_mse"].shape == (6, 3)

    # Fig. 2 grid: 2 rows of original | 2 samples | gap | 2 neighbours, 20 px, padding 2, wide gap after the first.
    width, height = Image.open(out / "compare_topk_pixelcnn.png").size
    assert height == 2 * (2 * 20 + 3 * 2) and width == 2 * (6 * 20 + 7 * 2 + 6)


def test_default_out_and_labels(tiny_inverters, tiny_classifier, tmp_path, monkeypatch):
    import invkeras.analyses.compare as compare
    from invkeras.inverters import load_inverter

    pixelcnn = tiny_inverters["fc3"].model_path.parent
    # The default: the run's comparisons/<layer> folder (not written here: the workspace is shared).
    expected = tiny_classifier / "procedural" / "conv" / "comparisons" / "fc3"
    assert compare._default_out(load_inverter(pixelcnn)) == expected
    monkeypatch.setattr(compare, "_default_out", lambda inverter: tmp_path / "default")
    mse = tiny_inverters["mse_fc3"].model_path.parent  # the fast kind: only labels and paths are checked here
    result = compare_inverters(CompareConfig(inverters=[str(mse), str(mse)], num_images=3, num_samples=2,
                                             grid_inputs=0, max_train_examples=50), progress=False)
    assert [row["label"] for row in result.rows] == ["mse", "mse-2"] and result.grid_paths == {}
    assert result.json_path == tmp_path / "default" / "compare.json"
    assert result.rows[0]["IM-S"] == result.rows[1]["IM-S"]  # same seed, same samples
    with pytest.raises(InvkerasError, match="distinct label"):
        compare_inverters(CompareConfig(inverters=[str(pixelcnn)] * 2, labels=["a", "a"], num_images=2, num_samples=2))


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_mixing_layers_classifiers_or_images_is_refused(tiny_inverters, tiny_classifier, tmp_path, monkeypatch):
    pixelcnn = tiny_inverters["fc3"].model_path
    small = dict(num_images=3, num_samples=2, grid_inputs=0, max_train_examples=20, out=str(tmp_path / "out"))

    conv1 = _copy(pixelcnn, tmp_path / "conv1", layer="conv1", **{"config.layer": "conv1"})
    with pytest.raises(InvkerasError, match="different layers") as error:
        compare_inverters(CompareConfig(inverters=[str(pixelcnn), str(conv1)], **small), progress=False)
    message = _one_line(error)
    assert str(pixelcnn.parent) in message and str(conv1.parent) in message and "'conv1'" in message

    other_model = tmp_path / "other" / "model.keras"
    other_model.parent.mkdir()
    classifier = artifacts.classifier_path("procedural", "conv", str(tiny_classifier))
    shutil.copy(classifier, other_model)
    elsewhere = _copy(pixelcnn, tmp_path / "elsewhere", **{"data.classifier": str(other_model)})
    # A byte-identical copy (a workspace copied elsewhere) is the same classifier...
    compare_inverters(CompareConfig(inverters=[str(pixelcnn), str(elsewhere)], **small), progress=False)
    # ...another model, even of the same architecture, is not.
    import keras

    model = keras.saving.load_model(classifier)
    model.get_layer("logits").bias.assign(model.get_layer("logits").bias + 1.0)
    model.save(other_model)
    with pytest.raises(InvkerasError, match="different classifiers") as error:
        compare_inverters(CompareConfig(inverters=[str(pixelcnn), str(elsewhere)], **small), progress=False)
    assert str(other_model) in _one_line(error)

    # Same layer and classifier, but other held-out images (here: another data source, faked).
    from invkeras.inverters import data

    real = data.held_out_inputs

    def held_out_inputs(config, split, n):
        if config.data_dir == "other-data":
            inputs = real(config.model_copy(update={"data_dir": None}), split, n)
            x = inputs["x"].copy()
            x[0, 0, 0, 0] ^= 1
            return {**inputs, "x": x}
        return real(config, split, n)

    monkeypatch.setattr(data, "held_out_inputs", held_out_inputs)
    other_data = _copy(pixelcnn, tmp_path / "other_data", **{"config.data_dir": "other-data"})
    with pytest.raises(InvkerasError, match="different held-out test images") as error:
        compare_inverters(CompareConfig(inverters=[str(pixelcnn), str(other_data)], **small), progress=False)
    assert str(other_data.parent) in _one_line(error)


def test_inverter_without_classifier_or_h_is_one_line_error(tiny_inverters, tmp_path):
    source = tiny_inverters["fc3"].model_path
    copy = _copy(source, tmp_path / "user", data={"features": "mine.npz"})
    with pytest.raises(InvkerasError, match="user features") as error:
        compare_inverters(CompareConfig(inverters=[str(copy.parent)]))
    _one_line(error)

    gone = _copy(source, tmp_path / "gone", **{"data.classifier": str(tmp_path / "no" / "model.keras")})
    with pytest.raises(InvkerasError, match="no longer exists") as error:
        compare_inverters(CompareConfig(inverters=[str(gone)]))
    _one_line(error)

    with pytest.raises(InvkerasError, match="unconditional"):
        compare_inverters(CompareConfig(inverters=[str(tiny_inverters["none"].model_path.parent)], num_images=2))
    with pytest.raises(InvkerasError, match="at least 2 samples") as error:
        compare_inverters(CompareConfig(inverters=[str(source)], num_samples=1))
    _one_line(error)
