"""`invkeras report`: one self-contained HTML page (plus Markdown) from the artefacts' metadata."""

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.grids import save_grid
from invkeras.report import write_report

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_RECIPES = REPO_ROOT / "recipes" / "nash2019"


# --- a fake run directory, written the way the commands write it -----------------------


def classifier(run, *, accuracy, train_examples=None, dropout=True, checkpoints=()):
    path = run / "classifier" / "model.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a real model")
    config = {"dataset": "procedural", "arch": run.name, "train_examples": train_examples, "dropout": dropout,
              "learning_rate": 0.0003}
    artifacts.write_metadata(path, kind="classifier", config=config, seed=0, command=f"invkeras train-classifier --arch {run.name}",
                             results={"test_accuracy": accuracy, "best_val_accuracy": 0.5, "epochs": 3, "steps": 4321,
                                      "checkpoints": [f"step-{s:06d}.keras" for s in checkpoints]})
    for step in checkpoints:
        checkpoint = path.parent / "checkpoints" / f"step-{step:06d}.keras"
        checkpoint.parent.mkdir(exist_ok=True)
        checkpoint.write_bytes(b"x")
        artifacts.write_metadata(checkpoint, kind="classifier-checkpoint", config=config, seed=0,
                                 results={"step": step, "epoch": 0})
    return path


def inverter(directory, layer, classifier_path, nll, *, command="invkeras train-inverter"):
    path = directory / "inverter.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    summary = {"n": 48, "nll_nats": nll, "se_nats": 1.25, "bits_per_dim": nll / 400 / 0.6931, "se_bits_per_dim": 0.001}
    artifacts.write_metadata(path, kind="inverter", command=command, seed=7, layer=layer,
                             config={"dataset": "procedural", "arch": "conv", "layer": layer, "scale": "tiny"},
                             data={"classifier": str(classifier_path) if classifier_path else None, "layer": layer},
                             results={"validation": summary, "test": summary, "steps": 40, "seconds": 3.5})
    return path


def make_fake_run(tmp_path: Path) -> Path:
    """A workspace with two classifier runs, inverters (some on checkpoints), an MI table and grids."""
    workspace = tmp_path / "runs"
    run = workspace / "procedural" / "conv"
    model = classifier(run, accuracy=0.8765, checkpoints=(0, 100, 1000))
    overfit = classifier(workspace / "procedural" / "fc", accuracy=0.4321, train_examples=100, dropout=False,
                         checkpoints=(0, 100))
    inverter(run / "inverters" / "conv1", "conv1", model, 120.5)
    inverter(run / "inverters" / "fc3", "fc3", model, 234.5678, command="invkeras train-inverter --layer fc3 --seed 7")
    inverter(run / "inverters" / "none", "none", None, 300.25)
    for step in (0, 100, 1000):
        checkpoint = model.parent / "checkpoints" / f"step-{step:06d}.keras"
        inverter(run / "dynamics" / f"s{step}" / "fc3", "fc3", checkpoint, 250.0 - step / 100)
    for step in (0, 100):
        checkpoint = overfit.parent / "checkpoints" / f"step-{step:06d}.keras"
        inverter(workspace / "procedural" / "fc" / "dynamics" / f"s{step}", "fc3", checkpoint, 260.0)

    mi_table(run / "mi" / "test.json", {"conv1": (run / "inverters" / "conv1", 120.5),
                                         "fc3": (run / "inverters" / "fc3", 234.5678),
                                         "none": (run / "inverters" / "none", 300.25)})
    for step in (0, 100):  # estimates on checkpoints go to the over-training plot, not the by-layer one
        where = run / "dynamics" / f"s{step}"
        mi_table(where / "mi" / "test.json", {"fc3": (where / "fc3", 250.0 - step / 100)})

    images = np.zeros((2, 3, 8, 8, 1), dtype=np.uint8)
    images[..., 2:6, 2:6, :] = 255
    grid = save_grid(run / "inverters" / "fc3" / "samples.png", [list(row) for row in images])
    artifacts.write_metadata(grid, kind="inversion-samples", seed=3, layer="fc3", command="invkeras sample --seed 3",
                             config={"num_inputs": 2, "num_samples": 2, "split": "test", "method": "cached"},
                             results={"mean_l1_h_sample_to_h_x": 0.125})
    decoder = run / "decoders" / "fc3" / "decoder.keras"
    decoder.parent.mkdir(parents=True)
    decoder.write_bytes(b"x")
    artifacts.write_metadata(decoder, kind="mse-decoder", command="invkeras train-inverter --kind mse", layer="fc3",
                             results={"test": {"mse_per_pixel": 1234.5, "se": 6.78, "n": 10}, "steps": 9})
    # Kinds this module does not know (other tools' artefacts) are listed, not rejected.
    bespoke = save_grid(run / "bespoke" / "nearest.png", [list(images[0])])
    artifacts.write_metadata(bespoke, kind="bespoke-analysis", command="my-tool", results={"score": 0.0123})
    # Half-written files and resume state are ignored.
    (run / "inverters" / "fc3" / ".inverter.abc.keras.meta.json").write_text("{not json")
    (run / "classifier" / "backup").mkdir()
    (run / "classifier" / "backup" / "x.meta.json").write_text("{}")
    return workspace


def mi_table(path, inverters):
    """An MI JSON as `invkeras.mi.estimate_mi` writes it: {layer: (inverter dir, H*(x|h))}, reference the first."""
    ref = next(iter(inverters.values()))[1]
    rows = []
    for layer, (directory, nll) in inverters.items():
        rows.append({"layer": layer, "n_images": 48, "H*(x|h) nats": nll, "se nats": 1.25, "ci95 low": nll - 2.45,
                     "ci95 high": nll + 2.45, "bits/dim": nll / 277.3, "NCE nats": -nll,
                     "NCE - NCE(ref)": ref - nll, "se (paired)": 0.75,
                     "H*(x) - H*(x|h) [estimate]": None if layer == "none" else 300.25 - nll,
                     "H(x) - H*(x|h) [lower bound on I]": 8.841 - nll, "inverter": str(directory)})
    artifacts.write_json_atomic(path, {"split": "test", "dataset": "procedural", "entropy_nats": 8.841, "rows": rows})
    reference = next(iter(inverters))
    artifacts.write_metadata(path, kind="mi-estimate", command=f"invkeras estimate-mi --reference {reference}",
                             data="procedural", config={"inverters": [r["inverter"] for r in rows],
                                                        "reference": reference, "split": "test"})


@pytest.fixture
def fake_run(tmp_path):
    return make_fake_run(tmp_path)


def test_report_of_a_workspace(fake_run, tmp_path):
    html_path, md_path = write_report(fake_run, out=tmp_path / "out" / "report.html")
    html = html_path.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html), "no external assets"
    # Classifier table.
    assert "0.8765" in html and "0.4321" in html and "4321" in html and "overfitted" in html
    # Inverter table: NLL ± SE, bits/dim, steps.
    assert "234.57 ± 1.25" in html and "120.50 ± 1.25" in html and f"{234.5678 / 400 / 0.6931:.4f}" in html
    # MI table, with the paired difference to the reference and H(x).
    assert "-114.07 ± 0.75" in html and "reference layer: conv1" in html and "H(x) = 8.841" in html
    assert "[232.12, 237.02]" in html
    # Plots and the sample grid, embedded.
    assert html.count("data:image/png;base64,") >= 5  # nce by layer, accuracy, over training, samples, bespoke
    for title in ("NCE by layer", "Classifier test accuracy", "NCE over training"):
        assert title in html
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert all(base64.b64decode(e).startswith(b"\x89PNG") for e in embedded)
    # How each artefact was made.
    assert "<details>" in html and "invkeras train-inverter --layer fc3 --seed 7" in html
    assert "invkeras sample --seed 3" in html and "invkeras estimate-mi --reference conv1" in html
    assert "&quot;scale&quot;: &quot;tiny&quot;" in html  # the config, escaped
    # Unknown kinds are listed with their results.
    assert "MSE decoders" in html and "1234.5 ± 6.8" in html
    assert "bespoke-analysis" in html and "score=0.0123" in html

    md = md_path.read_text()
    assert md_path == html_path.with_suffix(".md") and "| 0.8765 |" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert any(link.endswith("inverters/fc3/samples.png") for link in links)
    assert "report-nce-over-training.png" in links
    for link in links:
        assert not Path(link).is_absolute() and (md_path.parent / link).is_file(), link
    assert "invkeras train-inverter --layer fc3 --seed 7" in md
    # Written with metadata; no temporary files; a rerun in place ignores the previous report.
    assert artifacts.read_metadata(html_path)["kind"] == "report"
    assert artifacts.read_metadata(md_path)["results"]["kinds"]["inverter"] == 8
    assert not [p for p in html_path.parent.iterdir() if p.name.startswith(".")]
    default_html, _ = write_report(fake_run)
    again, _ = write_report(fake_run)
    assert default_html == again == (fake_run / "report" / "report.html").resolve()
    assert artifacts.read_metadata(again)["results"]["artifacts"] == artifacts.read_metadata(html_path)["results"]["artifacts"]


def test_report_links_inverters_to_checkpoints(fake_run, tmp_path):
    html_path, _ = write_report(fake_run, out=tmp_path / "r.html")
    points = artifacts.read_metadata(tmp_path / "r-nce-over-training.png")["data"]
    lines = {(d["layer"], d["regime"]): [p["step"] for p in d["points"]] for d in points}
    assert lines == {("fc3", "normal"): [0, 100, 1000], ("fc3", "overfitted"): [0, 100]}
    # The by-layer plot has the one MI table not made on checkpoints, relative to its reference.
    by_layer = artifacts.read_metadata(tmp_path / "r-nce-by-layer.png")
    assert by_layer["config"]["reference"] == "conv1"
    assert [(g["group"], [p["layer"] for p in g["points"]]) for g in by_layer["data"]] == [
        ("procedural / conv (procedural/conv)", ["conv1", "fc3", "none"])]
    html = html_path.read_text()
    for where in ("procedural/conv", "procedural/conv/dynamics/s0", "procedural/conv/dynamics/s100"):
        assert f"procedural / conv, test split ({where})" in html


def test_report_of_one_run_and_errors(fake_run, tmp_path):
    html_path, md_path = write_report(fake_run / "procedural" / "fc", out=tmp_path / "fc")
    assert html_path.name == "fc.html" and md_path.name == "fc.md"
    html = html_path.read_text()
    assert "0.4321" in html and "0.8765" not in html
    with pytest.raises(InvkerasError, match="not found"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvkerasError, match="no artefacts"):
        write_report(tmp_path / "empty")


def test_cli_report(fake_run, tmp_path):
    from typer.testing import CliRunner

    from invkeras.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["report", str(fake_run), "--out", str(tmp_path / "cli.html")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli.html").is_file() and (tmp_path / "cli.md").is_file()
    result = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and result.output.strip().startswith("error:") and "nowhere" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["report", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output and "invkeras report" in result.output


@pytest.mark.slow
def test_report_of_a_real_tiny_run(tiny_inverters, tiny_classifier, tmp_path):
    html_path, md_path = write_report(tiny_classifier, out=tmp_path / "tiny.html")
    html = html_path.read_text()
    meta = artifacts.read_metadata(artifacts.classifier_path("procedural", "conv", tiny_classifier))
    assert f"{meta['results']['test_accuracy']:.4f}" in html
    for layer, result in tiny_inverters.items():
        held_out = result.test or result.validation
        assert f"{held_out['nll_nats']:.2f} ± {held_out['se_nats']:.2f}" in html, layer
    assert "NCE by layer" in html and "Classifier test accuracy" in html and "data:image/png;base64," in html
    assert "<details>" in html and "procedural/conv/inverters/fc3/inverter.keras" in html
    assert (tmp_path / "tiny-nce-by-layer.png").is_file() and md_path.is_file()


# --- the paper's recipes ------------------------------------------------------------------


EXPECTED_RECIPES = ["architectures_affnist", "layers_cifar10", "layers_mnist", "layers_svhn", "training_dynamics_mnist"]
OFFLINE_SMALL = {"architectures_affnist", "layers_mnist", "training_dynamics_mnist"}  # run on ../shared MNIST


def _check_inputs_are_trained_first(recipe, label):
    """Every inverter or decoder a sample/compare/estimate-mi step reads is made by an earlier step."""
    made = set()
    for name, step in recipe.steps.items():
        if step.command == "train-inverter":
            made.add(step.out_dir())
        if step.command in ("sample", "compare", "estimate-mi"):
            used = ([inverter for _, inverter in step.rows()] if step.command == "estimate-mi"
                    else [step.inverter(layer) for layer in step.layers])
            if getattr(step, "with_decoder", False):
                used += [step.decoder(layer) for layer in step.layers]
            if step.command == "estimate-mi" and step.unconditional:
                used.append(step.inverter("none"))
            assert set(used) <= made, (label, name)


def test_paper_recipes_validate():
    from invkeras.recipes import TrainInverterStep, load_recipe

    assert sorted(p.stem for p in PAPER_RECIPES.glob("*.yaml")) == EXPECTED_RECIPES
    for path in sorted(PAPER_RECIPES.glob("*.yaml")):
        paper = load_recipe(path)
        small = load_recipe(path, ["scale=small"])  # the documented small run is exactly this
        assert paper.scale == "paper" and small.scale == "small", path.name
        assert list(paper.steps) == list(yaml.safe_load(path.read_text())["steps"])
        assert [n for n in paper.steps if n in small.steps] == list(small.steps)  # a variant only drops steps
        commands = [step.command for step in paper.steps.values()]
        first_inverter = commands.index("train-inverter")
        assert set(commands[:first_inverter]) <= {"train-classifier", "extract"}, path.name
        assert "train-classifier" not in commands[first_inverter:], path.name  # classifiers come first
        assert "estimate-mi" in commands and commands.index("estimate-mi") > first_inverter, path.name
        for name, step in paper.steps.items():
            if step.command == "train-classifier":
                assert step.learning_rate == 3e-4, name
            if isinstance(step, TrainInverterStep):
                assert (step.scale, step.learning_rate, step.lr_decay) == ("paper", 1e-3, 0.9999), name
                if name in small.steps:
                    assert small.steps[name].scale in ("small", "tiny") and small.steps[name].max_steps <= 1000, name
        if path.stem in OFFLINE_SMALL:
            assert all("../shared/data/mnist" in s.dataset for s in small.steps.values() if hasattr(s, "dataset"))
        _check_inputs_are_trained_first(paper, path.name)
        _check_inputs_are_trained_first(small, path.name + " (small)")
        assert json.loads(paper.model_dump_json())["name"].startswith("nash2019-")


def test_paper_recipes_match_the_paper():
    from invkeras.recipes import TrainInverterStep, TrainMSEDecoderStep, load_recipe

    for key in ("mnist", "svhn", "cifar10"):
        recipe = load_recipe(PAPER_RECIPES / f"layers_{key}.yaml")
        assert recipe.dataset == {"mnist": "mnist", "svhn": "svhn_cropped", "cifar10": "cifar10"}[key]
        inverters = {s.layer: s for s in recipe.steps.values() if isinstance(s, TrainInverterStep)}
        assert set(inverters) == {"conv1", "conv2", "fc3", "logits", "none"}
        decoders = {s.layer for s in recipe.steps.values() if isinstance(s, TrainMSEDecoderStep)}
        assert decoders == {"conv1", "conv2", "fc3", "logits"}
        assert recipe.steps["distances"].num_images == 500 and recipe.steps["distances"].num_samples == 10
        assert inverters["fc3"].h_dropout == (0.2 if key == "cifar10" else None)
        assert recipe.steps["information"].reference == "conv1"

    affnist = load_recipe(PAPER_RECIPES / "architectures_affnist.yaml")
    assert affnist.dataset == "affnist"
    archs = {s.arch for s in affnist.steps.values() if s.command == "train-classifier"}
    assert archs == {"conv", "conv-gpool", "fc"}
    fc3 = {s.arch for s in affnist.steps.values() if isinstance(s, TrainInverterStep) and s.layer == "fc3"}
    assert fc3 == archs and {s.arch for s in affnist.steps.values() if s.command == "estimate-mi"} == archs
    decoders = {s.arch for s in affnist.steps.values() if isinstance(s, TrainMSEDecoderStep)}
    assert decoders == archs  # an MSE decoder of FC3 beside each inverter

    dynamics = load_recipe(PAPER_RECIPES / "training_dynamics_mnist.yaml")
    classifiers = {n: s for n, s in dynamics.steps.items() if s.command == "train-classifier"}
    normal, overfitted = classifiers["classifier_normal"], classifiers["classifier_overfitted"]
    assert normal.save_at == overfitted.save_at == [0, 100, 1000, 10000, 100000]
    assert (overfitted.train_examples, overfitted.dropout) == (100, False) and normal.dropout
    assert normal.model_path() != overfitted.model_path()
    assert normal.steps_per_epoch == overfitted.steps_per_epoch == 1000 and normal.epochs * 1000 == 100000
    inverters = [s for s in dynamics.steps.values() if isinstance(s, TrainInverterStep)]
    checkpoints = {(s.model, s.layer) for s in inverters}
    for classifier_step in (normal, overfitted):
        for step in classifier_step.save_at:
            for layer in ("conv1", "fc3"):
                model = str(classifier_step.model_path().parent / "checkpoints" / f"step-{step:06d}.keras")
                assert (model, layer) in checkpoints
    assert len({s.out_dir() for s in inverters}) == len(inverters) == 20
    assert len({s.workspace for s in inverters}) == 10  # features of different checkpoints never collide
    # Enough steps for the last checkpoint in both regimes: epochs x steps_per_epoch, paper and small.
    small = load_recipe(PAPER_RECIPES / "training_dynamics_mnist.yaml", ["scale=small"])
    for recipe in (dynamics, small):
        last = max(recipe.steps["classifier_normal"].save_at)
        for name in ("classifier_normal", "classifier_overfitted"):
            step = recipe.steps[name]
            assert step.epochs * step.steps_per_epoch >= last and step.patience >= step.epochs, name
    assert max(small.steps["classifier_normal"].save_at) == 10000 and small.dataset.startswith("idx:")
