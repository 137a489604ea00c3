"""Recipes: schema validation with one-line errors, overrides, and skipping finished steps."""

import json
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
        "train-classifier", "extract", "train-inverter", "train-inverter", "train-inverter", "train-inverter", "sample",
        "sample", "sample", "estimate-mi"]
    assert recipe.steps["classifier"].dataset == "procedural"  # inherited from the top level
    assert recipe.steps["inverter_fc3"].scale == "tiny" and recipe.steps["inverter_fc3"].arch == "conv"
    assert recipe.steps["inverter_fc3"].filters == 16 and recipe.steps["decoder_fc3"].kind == "mse"


def test_ground_truth_recipe_runs_from_all_factors_to_none():
    from invkeras.analyses.ground_truth import parse_subset, true_conditional_entropy

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes/ground_truth_procedural.yaml")
    steps = [recipe.steps["bounds"], recipe.steps["bounds_most_entropy"]]
    assert all(step.command == "ground-truth" and step.scale == "tiny" for step in steps)
    truths = [true_conditional_entropy(parse_subset(s)) for step in steps for s in step.subsets]
    assert truths[0] == 0.0 and truths == sorted(truths) and len(set(truths)) == len(truths)
    assert truths[-1] == pytest.approx(8.841, abs=1e-3)
    # The subsets with the most entropy left train longer, into a table of their own.
    assert steps[1].max_steps > steps[0].max_steps and steps[1].out_dir() != steps[0].out_dir()
    # Done only when every subset's model exists: a table of fewer subsets does not count.
    from invkeras.recipes.runner import step_outputs

    for step in steps:
        outputs = step_outputs(step)
        assert len(outputs) == len(step.subsets) + 1 and outputs[-1].name == "ground_truth.json"
        assert [p.parent.name for p in outputs[:-1]] == step.subsets


def test_the_top_level_scale_does_not_reach_an_edit_steps_own_scale(tmp_path):
    path = write(tmp_path, """
        name: t
        dataset: procedural
        scale: small
        steps:
          shift: {command: edit, layers: [logits], shift: "1:5"}
          multiply: {command: edit, layers: [logits], scale: 3.0, subdir: scaled}
    """)
    recipe = load_recipe(path)
    assert recipe.steps["shift"].scale is None and recipe.steps["multiply"].scale == 3.0


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


def test_a_step_whose_settings_changed_runs_again_and_an_unchanged_one_does_not(tmp_path):
    body = """
        name: resume
        dataset: procedural
        workspace: {ws}
        steps:
          clf: {{command: train-classifier, epochs: 1, train_examples: 256, batch_size: 64}}
          feats: {{command: extract, layers: [fc3], splits: [test], limit: {limit}}}
    """
    path = write(tmp_path, body.format(ws=tmp_path / "ws", limit=32))
    assert [r.status for r in run_recipe(load_recipe(path), source=path)] == ["ran", "ran"]
    record = tmp_path / "ws/recipes/resume.steps/feats.json"
    assert json.loads(record.read_text())["settings"]["limit"] == 32
    assert [r.status for r in run_recipe(load_recipe(path), source=path)] == ["skipped", "skipped"]

    # Its outputs are complete, but not the ones the recipe asks for now: it runs again.
    path = write(tmp_path, body.format(ws=tmp_path / "ws", limit=48))
    assert [r.status for r in run_recipe(load_recipe(path), source=path)] == ["skipped", "ran"]
    manifest = tmp_path / "ws/procedural/conv/features/fc3/test/manifest.json"
    assert json.loads(manifest.read_text())["num_examples"] == 48
    assert json.loads(record.read_text())["settings"]["limit"] == 48

    # A record from before a setting existed: that setting at its default matches what ran, so
    # the step is skipped; set to anything else, the step runs again.
    clf_record = tmp_path / "ws/recipes/resume.steps/clf.json"
    older = json.loads(clf_record.read_text())
    assert older["settings"].pop("lr_schedule") == "constant"
    clf_record.write_text(json.dumps(older))
    assert [r.status for r in run_recipe(load_recipe(path), source=path)] == ["skipped", "skipped"]
    clf_record.write_text(json.dumps(older))
    cosine = write(tmp_path, body.format(ws=tmp_path / "ws", limit=48).replace("batch_size: 64}",
                                                                               "batch_size: 64, lr_schedule: cosine}"))
    assert [r.status for r in run_recipe(load_recipe(cosine), source=cosine)][0] == "ran"

    # Outputs with no record (written before records were kept) count as finished.
    import shutil

    shutil.rmtree(tmp_path / "ws/recipes/resume.steps")
    path = write(tmp_path, body.format(ws=tmp_path / "ws", limit=40))
    assert [r.status for r in run_recipe(load_recipe(path), source=path)] == ["skipped", "skipped"]


def test_a_step_runs_again_once_a_step_it_reads_from_has_run_again(tmp_path):
    from invkeras.data.features import file_digest

    body = """
        name: chain
        dataset: procedural
        workspace: {ws}
        steps:
          clf: {{command: train-classifier, epochs: {epochs}, train_examples: 256, batch_size: 64}}
          feats: {{command: extract, layers: [fc3], splits: [test], limit: 32}}
    """
    path = write(tmp_path, body.format(ws=tmp_path / "ws", epochs=1))
    assert [r.status for r in run_recipe(load_recipe(path), source=path)] == ["ran", "ran"]
    records = tmp_path / "ws/recipes/chain.steps"
    clf, feats = (json.loads((records / f"{name}.json").read_text()) for name in ("clf", "feats"))
    assert feats["after"] == {"clf": clf["run"]}

    # The classifier trains again; the features' own settings did not change, but they were
    # extracted from the old classifier, so they are extracted again, from the new one.
    path = write(tmp_path, body.format(ws=tmp_path / "ws", epochs=2))
    assert [r.status for r in run_recipe(load_recipe(path), source=path)] == ["ran", "ran"]
    manifest = json.loads((tmp_path / "ws/procedural/conv/features/fc3/test/manifest.json").read_text())
    assert manifest["model_sha256"] == file_digest(tmp_path / "ws/procedural/conv/classifier/model.keras")
    assert [r.status for r in run_recipe(load_recipe(path), source=path)] == ["skipped", "skipped"]

    # A run killed after the classifier ran again and before the features did: the next run
    # redoes the features.
    clf = json.loads((records / "clf.json").read_text())
    clf["run"] = "a later run"
    (records / "clf.json").write_text(json.dumps(clf))
    assert [r.status for r in run_recipe(load_recipe(path), source=path)] == ["skipped", "ran"]
    assert json.loads((records / "feats.json").read_text())["after"] == {"clf": "a later run"}

    # A record from before the marks were kept says nothing about what it read: skipped.
    older = json.loads((records / "feats.json").read_text())
    del older["after"], older["run"]
    (records / "feats.json").write_text(json.dumps(older))
    assert [r.status for r in run_recipe(load_recipe(path), source=path)] == ["skipped", "skipped"]


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
    assert type(mse).__name__ == "TrainInverterStep_mse" and mse.max_steps == 100000
    assert not hasattr(mse, "lr_decay")  # defaults reach only steps whose schema has the key
    assert str(mse.model_path()).endswith("procedural/conv/inverters/mse/fc3/inverter.keras")
    assert str(inv.model_path()).endswith("procedural/conv/inverters/pixelcnn/fc3/inverter.keras")

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
        ("steps:\n  a: {command: train-inverter, kind: vae}\n",
         r"steps\.a\.kind: unknown inverter kind 'vae'; choose from .*mse.*pixelcnn"),
        ("steps:\n  a: {command: compare, layers: [fc3], kinds: [pixelcnn, vae]}\n", r"steps\.a\.kinds.*'vae'"),
    ],
)
def test_bad_defaults_and_variants_get_one_line(tmp_path, body, message):
    path = write(tmp_path, "name: bad\n" + body)
    with pytest.raises(InvkerasError, match=message) as info:
        load_recipe(path)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_mse_samples_and_compare_steps_run_a_real_tiny_pipeline(tiny_inverters, tiny_classifier, tmp_path,
                                                                 monkeypatch):
    """The MSE kind, the sample-with-reconstruction and the kinds-side-by-side compare steps on
    the session's tiny fc3 inverter."""
    import json
    import shutil

    from invkeras import artifacts

    workspace = tmp_path / "ws"
    # A private copy of the classifier run, so this test's outputs never land in the shared fixture;
    # without its MSE inverter, which the recipe trains again.
    shutil.copytree(tiny_classifier / "procedural", workspace / "procedural")
    shutil.rmtree(workspace / "procedural/conv/inverters/mse")
    path = write(tmp_path, f"""
        name: baselines
        dataset: procedural
        workspace: {workspace}
        steps:
          decoder: {{command: train-inverter, kind: mse, layer: fc3, max_steps: 20, steps_per_checkpoint: 10,
                     train_examples: 512, eval_examples: 48, filters: 8}}
          samples: {{command: sample, layers: [fc3], num_inputs: 2, num_samples: 2, reconstruction: mse}}
          distances: {{command: compare, layers: [fc3], num_images: 3, num_samples: 2, grid_inputs: 1,
                       grid_samples: 4, top_k: 2, max_train_examples: 256, kinds: [pixelcnn, mse]}}
          information: {{command: estimate-mi, layers: [fc3], reference: fc3, eval_examples: 48}}
    """)
    results = run_recipe(load_recipe(path), source=path)
    assert [r.status for r in results] == ["ran", "ran", "ran", "ran"]
    mi = json.loads((workspace / "procedural/conv/mi/test.json").read_text())
    assert [row["layer"] for row in mi["rows"]] == ["fc3", "none"] and mi["rows"][0]["NCE - NCE(ref)"] == 0
    inverter = workspace / "procedural/conv/inverters/pixelcnn/fc3"
    decoder = workspace / "procedural/conv/inverters/mse/fc3/inverter.keras"
    comparison = workspace / "procedural/conv/comparisons/fc3"
    assert artifacts.read_metadata(decoder)["results"]["steps"] == 20
    for name in ("samples.png", "samples_reconstruction.png"):
        assert artifacts.is_complete(inverter / name), name
    assert artifacts.is_complete(comparison / "compare.json")
    table = json.loads((comparison / "compare.json").read_text())
    assert [row["kind"] for row in table["rows"]] == ["pixelcnn", "mse"]
    assert table["rows"][1]["diversity_pixel_l1"]["mean"] == 0 < table["rows"][0]["diversity_pixel_l1"]["mean"]
    assert table["training_examples_searched"] == 256 and table["n_images"] == 3
    assert "IM-NN" in results[2].summary

    again = run_recipe(load_recipe(path), source=path)
    assert [r.status for r in again] == ["skipped", "skipped", "skipped", "skipped"]

    # `invkeras run` prints the side-by-side table once the steps are done.
    from typer.testing import CliRunner

    from invkeras.cli import app

    import invkeras.cli

    monkeypatch.setattr(invkeras.cli.console, "width", 250)  # wide tables print unfolded
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    nn = table["nearest_training"]
    assert "1NN (training)" in result.output and f"{nn['mean_l1']:.2f} ±" in result.output
    assert "diversity" in result.output


def test_estimate_mi_across_architectures_has_its_own_table(tmp_path):
    path = write(tmp_path, """
        name: archs
        dataset: affnist
        steps:
          info: {command: estimate-mi, archs: [conv, fc], layers: [fc3], unconditional: false, reference: conv/fc3}
    """)
    step = load_recipe(path).steps["info"]
    assert [(label, str(p)) for label, p in step.rows()] == [
        ("conv/fc3", "runs/affnist/conv/inverters/pixelcnn/fc3"), ("fc/fc3", "runs/affnist/fc/inverters/pixelcnn/fc3")]
    assert str(step.out()) == "runs/affnist/architectures/mi/test.json"


def test_recipe_paths_stay_inside_the_workspace(tmp_path):
    body = """
        name: escape
        workspace: {ws}
        steps:
          clf: {{command: train-classifier, out: {out}}}
    """
    inside = write(tmp_path, body.format(ws=tmp_path / "ws", out=tmp_path / "ws/m.keras"))
    assert load_recipe(inside).steps["clf"].out.endswith("m.keras")
    outside = write(tmp_path, body.format(ws=tmp_path / "ws", out=tmp_path / "elsewhere/m.keras"))
    with pytest.raises(InvkerasError, match=r"steps\.clf\.out: .* is outside the recipe's workspace") as info:
        load_recipe(outside)
    assert "\n" not in str(info.value) and "--allow-outside-workspace" in str(info.value)
    assert load_recipe(outside, allow_outside_workspace=True).steps["clf"].out.endswith("elsewhere/m.keras")
    with pytest.raises(InvkerasError, match=r"name: '\.\./\.\./x' must be a plain name"):
        load_recipe(write(tmp_path, "name: ../../x\nsteps:\n  a: {command: extract, layers: [fc3]}\n"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("steps.a.layers=[1", r"--set 'steps\.a\.layers=\[1': the value is not valid YAML"),
        ("seed=!!python/object/apply:os.system [echo hi]", r"the value is not valid YAML"),
    ],
)
def test_bad_set_values_are_one_line(tmp_path, override, message):
    path = write(tmp_path, "name: s\nsteps:\n  a: {command: extract, layers: [fc3]}\n")
    with pytest.raises(InvkerasError, match=message) as info:
        load_recipe(path, [override])
    assert "\n" not in str(info.value)


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\nsteps:\n  a: {command: extract, layers: [fc3]}\n".encode("latin-1"))
    with pytest.raises(InvkerasError, match=r"not UTF-8 text \(byte 9\)"):
        load_recipe(path)


def test_a_step_the_user_drops_stays_dropped_whatever_the_variant_sets_on_it(tmp_path):
    path = write(tmp_path, """
        name: v
        scale: small
        variants:
          small: {steps.b.layers: [conv1]}
        steps:
          a: {command: extract, layers: [fc3]}
          b: {command: extract, layers: [fc3]}
    """)
    assert load_recipe(path).steps["b"].layers == ["conv1"]
    assert list(load_recipe(path, ["steps.b=null"]).steps) == ["a"]


def test_the_quickstart_recipe_runs_end_to_end_when_shrunk_and_a_rerun_skips_every_step(tmp_path):
    """`make demo` as it ships, every step the same command on the same layers, shrunk with
    --set overrides to a few steps on a few hundred images."""
    from invkeras import artifacts
    from invkeras.recipes.runner import step_outputs

    path = Path(__file__).resolve().parents[1] / QUICKSTART
    inverters = ("inverter_conv1", "inverter_fc3", "inverter_unconditional", "decoder_fc3")
    overrides = [f"workspace={tmp_path / 'runs'}", "steps.classifier.epochs=1",
                 "steps.classifier.train_examples=256", "steps.classifier.save_at=[0]",
                 "defaults.train-inverter.train_examples=128", "defaults.train-inverter.eval_examples=16",
                 "defaults.train-inverter.filters=8", "steps.information.eval_examples=16",
                 *(f"steps.{name}.max_steps=4" for name in inverters),
                 *(f"steps.{name}.steps_per_checkpoint=2" for name in inverters),
                 *(f"steps.{name}.{key}=2" for name in ("samples", "samples_fc3_beside_mse", "samples_unconditional")
                   for key in ("num_inputs", "num_samples"))]
    recipe = load_recipe(path, overrides)
    first = run_recipe(recipe, source=path)
    assert [r.name for r in first] == list(recipe.steps) and {r.status for r in first} == {"ran"}
    for name, step in recipe.steps.items():
        outputs = step_outputs(step)
        assert outputs and all(artifacts.is_complete(p) for p in outputs), name
        assert all(Path(p).is_relative_to(tmp_path / "runs") for p in outputs), name
    again = run_recipe(load_recipe(path, overrides), source=path)
    assert [r.status for r in again] == ["skipped"] * len(recipe.steps)
