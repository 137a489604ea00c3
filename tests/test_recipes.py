"""Recipes: schema validation with one-line errors, overrides, and skipping finished steps."""

import textwrap
from pathlib import Path

import pytest

from invkeras.errors import InvkerasError
from invkeras.recipes import load_recipe, run_recipe

QUICKSTART = "recipes/quickstart.yaml"


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_quickstart_recipe_is_valid():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / QUICKSTART)
    assert [step.command for step in recipe.steps.values()] == [
        "train-classifier", "extract", "train-inverter", "train-inverter", "train-inverter", "sample", "estimate-mi"]
    assert recipe.steps["classifier"].dataset == "procedural"  # inherited from the top level
    assert recipe.steps["inverter_fc3"].scale == "tiny" and recipe.steps["inverter_fc3"].arch == "conv"


def test_overrides_reach_steps_and_shared_keys(tmp_path):
    path = write(tmp_path, """
        name: t
        dataset: procedural
        steps:
          clf: {command: train-classifier, epochs: 5}
    """)
    recipe = load_recipe(path, ["steps.clf.epochs=2", "seed=9", "dataset=mnist"])
    step = recipe.steps["clf"]
    assert (step.epochs, step.seed, step.dataset) == (2, 9, "mnist")


@pytest.mark.parametrize(
    "body, overrides, message",
    [
        ("steps:\n  clf: {command: train-classifier, epocs: 2}\n", [], r"steps\.clf\.epocs: unknown key"),
        ("steps:\n  clf: {command: train-classifier, epochs: many}\n", [], r"steps\.clf\.epochs: .*integer.*'many'"),
        ("steps:\n  clf: {command: fly}\n", [], r"steps\.clf: unknown command 'fly'"),
        ("steps:\n  clf: {arch: conv}\n", [], r"steps\.clf: step needs a 'command' key"),
        ("colour: red\nsteps:\n  clf: {command: train-classifier}\n", [], r"colour: unknown key"),
        ("steps:\n  clf: {command: train-classifier}\n", ["steps.nope.epochs=1"], r"'steps\.nope' is not a section"),
        ("steps:\n  clf: {command: train-classifier}\n", ["epochs"], r"expected KEY=VALUE"),
        ("steps:\n  clf: [unclosed\n", [], r"line \d+: YAML syntax error"),
    ],
)
def test_bad_recipes_get_one_line_naming_file_and_key(tmp_path, body, overrides, message):
    path = write(tmp_path, "name: bad\n" + body)
    with pytest.raises(InvkerasError, match=message) as info:
        load_recipe(path, overrides)
    assert "\n" not in str(info.value)
    if "KEY=VALUE" not in message and "section" not in message:
        assert str(path) in str(info.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(InvkerasError, match="file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_finished_steps_are_skipped(tmp_path):
    path = write(tmp_path, f"""
        name: resume
        dataset: procedural
        workspace: {tmp_path / 'ws'}
        steps:
          clf: {{command: train-classifier, epochs: 1, train_examples: 256, batch_size: 64}}
          feats: {{command: extract, layers: [fc3], splits: [test], limit: 32}}
    """)
    first = run_recipe(load_recipe(path), source=path)
    assert [r.status for r in first] == ["ran", "ran"]
    model = tmp_path / "ws/procedural/conv/classifier/model.keras"
    stamp = model.stat().st_mtime_ns

    # Lose the features (e.g. a kill mid-extract): only that step runs again.
    import shutil

    shutil.rmtree(tmp_path / "ws/procedural/conv/features")
    second = run_recipe(load_recipe(path), source=path)
    assert [r.status for r in second] == ["skipped", "ran"]
    assert model.stat().st_mtime_ns == stamp
    assert (tmp_path / "ws/recipes/resume.json.meta.json").exists()


def test_step_errors_name_the_recipe_and_step(tmp_path):
    path = write(tmp_path, f"""
        name: broken
        workspace: {tmp_path / 'ws'}
        steps:
          feats: {{command: extract, model: {tmp_path / 'missing.keras'}, layers: [fc3]}}
    """)
    with pytest.raises(InvkerasError, match=r"step 'feats': --model .*missing.keras: file not found"):
        run_recipe(load_recipe(path), source=path)


def test_defaults_variants_and_dropped_steps(tmp_path):
    path = write(tmp_path, """
        name: v
        dataset: procedural
        scale: paper
        defaults:
          train-inverter: {max_steps: 100000, lr_decay: 0.99, scale: tiny}
        variants:
          small:
            dataset: mnist
            defaults.train-inverter.max_steps: 500
            steps.unconditional: null
        steps:
          inv: {command: train-inverter, layer: fc3}
          own: {command: train-inverter, layer: conv1, max_steps: 7}
          mse: {command: train-inverter, kind: mse, layer: fc3}
          unconditional: {command: train-inverter, layer: none}
    """)
    paper = load_recipe(path)
    assert list(paper.steps) == ["inv", "own", "mse", "unconditional"]
    inv, own, mse = paper.steps["inv"], paper.steps["own"], paper.steps["mse"]
    assert (inv.max_steps, inv.lr_decay, inv.dataset) == (100000, 0.99, "procedural")
    assert inv.scale == "tiny"  # the command's default is more specific than the top-level scale
    assert own.max_steps == 7  # a step's own key wins over defaults
    assert type(mse).__name__ == "TrainMSEDecoderStep" and mse.max_steps == 100000
    assert not hasattr(mse, "lr_decay")  # defaults reach only steps whose schema has the key
    assert str(mse.model_path()).endswith("procedural/conv/decoders/fc3/decoder.keras")

    small = load_recipe(path, ["scale=small"])
    assert list(small.steps) == ["inv", "own", "mse"]
    assert (small.steps["inv"].max_steps, small.steps["inv"].dataset) == (500, "mnist")
    assert small.steps["own"].max_steps == 7
    # The user's own --set wins over the variant, whatever the order on the command line.
    mine = load_recipe(path, ["defaults.train-inverter.max_steps=9", "scale=small", "dataset=procedural"])
    assert (mine.steps["inv"].max_steps, mine.steps["inv"].dataset) == (9, "procedural")


@pytest.mark.parametrize(
    "body, message",
    [
        ("defaults:\n  train-inverter: {max_stepz: 3}\nsteps:\n  a: {command: extract, layers: [fc3]}\n",
         r"defaults\.train-inverter\.max_stepz: not an option of train-inverter"),
        ("defaults:\n  fly: {}\nsteps:\n  a: {command: extract, layers: [fc3]}\n", r"defaults\.fly: unknown command"),
        ("scale: small\nvariants:\n  small: {steps.b.layers: [x]}\nsteps:\n  a: {command: extract, layers: [fc3]}\n",
         r"variants\.small\.steps\.b\.layers: 'steps\.b' is not a section"),
        ("steps:\n  a: {command: train-inverter, kind: gan}\n", r"steps\.a\.kind: .*'pixelcnn'.*'gan'"),
    ],
)
def test_bad_defaults_and_variants_get_one_line(tmp_path, body, message):
    path = write(tmp_path, "name: bad\n" + body)
    with pytest.raises(InvkerasError, match=message) as info:
        load_recipe(path)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_mse_decoder_samples_and_compare_steps_run_a_real_tiny_pipeline(tiny_inverters, tiny_classifier, tmp_path):
    """The decoder, sample-with-decoder and compare steps on the session's tiny fc3 inverter."""
    import json

    from invkeras import artifacts

    workspace = tmp_path / "ws"
    # A private copy of the classifier run, so this test's outputs never land in the shared fixture.
    import shutil

    shutil.copytree(tiny_classifier / "procedural", workspace / "procedural")
    path = write(tmp_path, f"""
        name: baselines
        dataset: procedural
        workspace: {workspace}
        steps:
          decoder: {{command: train-inverter, kind: mse, layer: fc3, max_steps: 20, steps_per_checkpoint: 10,
                     train_examples: 512, eval_examples: 48, filters: 8}}
          samples: {{command: sample, layers: [fc3], num_inputs: 2, num_samples: 2, with_decoder: true}}
          distances: {{command: compare, layers: [fc3], num_images: 3, num_samples: 2, grid_inputs: 1,
                       grid_samples: 4, top_k: 2, max_train_examples: 256, with_decoder: true}}
    """)
    results = run_recipe(load_recipe(path), source=path)
    assert [r.status for r in results] == ["ran", "ran", "ran"]
    inverter = workspace / "procedural/conv/inverters/fc3"
    decoder = workspace / "procedural/conv/decoders/fc3/decoder.keras"
    assert artifacts.read_metadata(decoder)["results"]["steps"] == 20
    for name in ("samples.png", "samples_mse.png", "compare.json", "compare_topk.png"):
        assert artifacts.is_complete(inverter / name), name
    table = json.loads((inverter / "compare.json").read_text())
    assert [row["method"] for row in table["rows"]][:3] == ["1NN", "IM-S", "IM-NN"]
    assert any("MSE" in row["method"] for row in table["rows"])
    assert table["training_examples_searched"] == 256 and table["n_images"] == 3
    assert "1NN" in results[2].summary

    again = run_recipe(load_recipe(path), source=path)
    assert [r.status for r in again] == ["skipped", "skipped", "skipped"]

    # The MSE grid showed the samples already drawn for samples.png rather than drawing them again...
    import invkeras.inverters.pixelcnn.sampling
    from invkeras.decoders import save_samples_with_reconstruction

    recipe_grid = (inverter / "samples_mse.png").read_bytes()

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again")

    original_sample = invkeras.inverters.pixelcnn.sampling.sample
    invkeras.inverters.pixelcnn.sampling.sample = no_sampling
    try:
        save_samples_with_reconstruction(inverter, decoder.parent, None, 2, 2, 0)
    finally:
        invkeras.inverters.pixelcnn.sampling.sample = original_sample
    assert (inverter / "samples_mse.png").read_bytes() == recipe_grid
    # ...and they are exactly the samples a fresh draw gives.
    fresh = save_samples_with_reconstruction(inverter, decoder.parent, tmp_path / "fresh", 2, 2, 0, reuse_samples=False)
    assert fresh.grid_path.read_bytes() == recipe_grid

    # `invkeras run` prints the distance table (Table 1) once the steps are done.
    from typer.testing import CliRunner

    from invkeras.cli import app

    result = CliRunner().invoke(app, ["run", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Mean L1 distance" in result.output and f"{table['rows'][0]['mean_l1']:.2f} ±" in result.output

    # The report gives the decoder and the distance table their own sections.
    from invkeras.reports.report import write_report

    html_path, _ = write_report(workspace, out=tmp_path / "report.html")
    html = html_path.read_text()
    test = artifacts.read_metadata(decoder)["results"]["test"]
    assert "MSE decoders" in html and f"{test['mse_per_pixel']:.1f} ± {test['se']:.1f}" in html
    one_nn = table["rows"][0]
    assert "Representation-space distances" in html and f"{one_nn['mean_l1']:.2f} ± {one_nn['se']:.2f}" in html
    assert "input | MSE reconstruction | samples" in html


def test_estimate_mi_across_architectures_has_its_own_table(tmp_path):
    path = write(tmp_path, """
        name: archs
        dataset: affnist
        steps:
          info: {command: estimate-mi, archs: [conv, fc], layers: [fc3], unconditional: false, reference: conv/fc3}
    """)
    step = load_recipe(path).steps["info"]
    assert [(label, str(p)) for label, p in step.rows()] == [
        ("conv/fc3", "runs/affnist/conv/inverters/fc3"), ("fc/fc3", "runs/affnist/fc/inverters/fc3")]
    assert str(step.out()) == "runs/affnist/architectures/mi/test.json"
