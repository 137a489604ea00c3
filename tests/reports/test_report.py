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
from invkeras.reports.grids import save_grid
from invkeras.reports.collect import inverter_metadata
from invkeras.reports.report import write_report
from invkeras.reports.sections import Section, Table, fmt, register_section, registered_sections

REPO_ROOT = Path(__file__).resolve().parents[2]
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


def any_inverter(directory, layer, classifier_path, kind, summary, *, capabilities=("sample",), command=None, **config):
    """An inverter of any kind, in the metadata contract the report reads (only `summary` is kind-specific)."""
    path = directory / "inverter.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    artifacts.write_metadata(path, kind="inverter", command=command or f"invkeras train-inverter --kind {kind}", seed=7,
                             layer=layer, inverter_kind=kind, capabilities=list(capabilities),
                             config={"kind": kind, "dataset": "procedural", "arch": "conv", "layer": layer, **config},
                             data={"classifier": str(classifier_path) if classifier_path else None, "layer": layer,
                                   "dataset": "procedural"},
                             results={"validation": summary, "test": summary, "steps": 40, "seconds": 3.5})
    return path


def inverter(directory, layer, classifier_path, nll, *, command="invkeras train-inverter"):
    """A PixelCNN inverter: a pixel likelihood, so NLL and bits/dim besides its headline."""
    summary = {"n": 48, "nll_nats": nll, "se_nats": 1.25, "bits_per_dim": nll / 400 / 0.6931, "se_bits_per_dim": 0.001,
               "headline": {"name": "NLL nats", "value": nll, "se": 1.25}}
    return any_inverter(directory, layer, classifier_path, "pixelcnn", summary,
                        capabilities=("sample", "pixel_log_prob"), command=command, scale="tiny")


def mse_inverter(directory, layer, classifier_path, mse=1234.5, se=6.78):
    """A point-estimate inverter: a reconstruction error, no likelihood."""
    summary = {"n": 10, "mse_per_pixel": mse, "se": se, "psnr_db": 17.2,
               "headline": {"name": "MSE per pixel", "value": mse, "se": se}}
    return any_inverter(directory, layer, classifier_path, "mse", summary, capabilities=("sample", "reconstruct"))


def l1(mean, se, dims):
    return {"mean_l1": mean, "se": se, "mean_l1_per_dim": mean / dims, "se_per_dim": se / dims}


def compare_row(inverter_path, kind, ims, imnn, *, label=None, agreement=0.9, diversity=(500.0, 12.0), nll=None,
                dims=64, to_input=640.0):
    """One inverter's row of compare.json; diversity (pixel, h) of 0 for a point estimate."""
    return {"label": label or kind, "kind": kind, "inverter": str(inverter_path),
            "IM-S": l1(ims, 1.5, dims), "IM-NN": l1(imnn, 1.0, dims),
            "label_agreement": None if agreement is None else {"mean": agreement, "se": 0.05},
            "diversity_pixel_l1": {"mean": diversity[0], "se": diversity[0] / 10},
            "diversity_h_l1": {"mean": diversity[1], "se": diversity[1] / 10},
            "pixel_l1_to_input": {"mean": to_input, "se": to_input / 20},
            "nll_nats": None if nll is None else {"mean": nll, "se": 1.25}}


def comparison(directory, layer, rows, *, nearest=40.0, dims=64):
    """compare.json (new format: one row per inverter) and a top-k grid per row, as `invkeras compare` writes them."""
    payload = {"layer": layer, "split": "test", "n_images": 20, "samples_per_image": 5, "feature_dims": dims,
               "training_examples_searched": 512, "distance": "L1 (sum over features)",
               "nearest_training": l1(nearest, 2.0, dims), "rows": rows}
    path = artifacts.write_json_atomic(directory / "compare.json", payload)
    facts = {"layer": layer, "split": "test"}
    artifacts.write_metadata(path, kind="representation-comparison", command=f"invkeras compare --layer {layer}",
                             config={"inverters": [r["inverter"] for r in rows]}, data={"dataset": "procedural"},
                             results={"rows": rows}, **facts)
    tile = np.zeros((8, 8, 1), np.uint8)
    for row in rows:
        grid = save_grid(directory / f"compare_topk_{row['label']}.png", [[tile, tile]])
        artifacts.write_metadata(grid, kind="representation-comparison", label=row["label"], inverter_kind=row["kind"],
                                 config={"inverter": row["inverter"]}, **facts)
    return path


def make_fake_run(tmp_path: Path) -> Path:
    """A workspace with two classifier runs, inverters of two kinds (some on checkpoints), an MI table,
    comparisons and grids."""
    workspace = tmp_path / "runs"
    run = workspace / "procedural" / "conv"
    model = classifier(run, accuracy=0.8765, checkpoints=(0, 100, 1000))
    overfit = classifier(workspace / "procedural" / "fc", accuracy=0.4321, train_examples=100, dropout=False,
                         checkpoints=(0, 100))
    inverter(run / "inverters" / "conv1", "conv1", model, 120.5)
    inverter(run / "inverters" / "fc3", "fc3", model, 234.5678, command="invkeras train-inverter --layer fc3 --seed 7")
    inverter(run / "inverters" / "none", "none", None, 300.25)
    mse_inverter(run / "inverters" / "mse" / "fc3", "fc3", model)
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

    comparison(run / "compare" / "fc3", "fc3", [
        compare_row(run / "inverters" / "fc3", "pixelcnn", 30.0, 20.0, nll=234.5678),
        compare_row(run / "inverters" / "mse" / "fc3", "mse", 25.0, 25.0, agreement=0.85, diversity=(0.0, 0.0)),
    ])
    comparison(run / "compare" / "conv1", "conv1", [compare_row(run / "inverters" / "conv1", "pixelcnn", 60.0, 50.0)],
               nearest=80.0)

    images = np.zeros((2, 3, 8, 8, 1), dtype=np.uint8)
    images[..., 2:6, 2:6, :] = 255
    grid = save_grid(run / "inverters" / "fc3" / "samples.png", [list(row) for row in images])
    artifacts.write_metadata(grid, kind="inversion-samples", seed=3, layer="fc3", inverter_kind="pixelcnn",
                             command="invkeras sample --seed 3",
                             config={"num_inputs": 2, "num_samples": 2, "split": "test", "method": "cached"},
                             results={"mean_l1_h_sample_to_h_x": 0.125})
    grid = save_grid(run / "inverters" / "fc3" / "samples_reconstruction.png", [list(row) for row in images])
    artifacts.write_metadata(grid, kind="inversion-samples-with-reconstruction", seed=3, layer="fc3",
                             inverter_kind="pixelcnn", reconstruction_kind="mse",
                             config={"num_inputs": 2, "num_samples": 1, "split": "test"},
                             results={"reconstruction_mse_per_pixel": 987.65})
    # Kinds this module does not know (other tools' artefacts) are listed, not rejected.
    bespoke = save_grid(run / "bespoke" / "nearest.png", [list(images[0])])
    artifacts.write_metadata(bespoke, kind="bespoke-analysis", command="my-tool", results={"score": 0.0123})
    # Half-written files and resume state are ignored.
    (run / "inverters" / "fc3" / ".inverter.abc.keras.meta.json").write_text("{not json")
    (run / "classifier" / "backup").mkdir()
    (run / "classifier" / "backup" / "x.meta.json").write_text("{}")
    return workspace


def mi_table(path, inverters):
    """An MI JSON as `invkeras.analyses.mi.estimate_mi` writes it: {layer: (inverter dir, H*(x|h))}, reference the first."""
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
    # Plots, sample grids and top-k grids, embedded.
    # nce by layer, accuracy, over training, 2 sample grids, 3 top-k grids, bespoke
    assert html.count("data:image/png;base64,") == 9
    for title in ("NCE by layer", "Classifier test accuracy", "NCE over training"):
        assert title in html
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert all(base64.b64decode(e).startswith(b"\x89PNG") for e in embedded)
    # How each artefact was made.
    assert "<details>" in html and "invkeras train-inverter --layer fc3 --seed 7" in html
    assert "invkeras sample --seed 3" in html and "invkeras estimate-mi --reference conv1" in html
    assert "&quot;scale&quot;: &quot;tiny&quot;" in html  # the config, escaped
    # Unknown kinds are listed with their results.
    assert "bespoke-analysis" in html and "score=0.0123" in html

    md = md_path.read_text()
    assert md_path == html_path.with_suffix(".md") and "| 0.8765 |" in md
    # One inverter table for every kind, each with its own headline; no separate MSE decoder section.
    assert ("| fc3 | mse | procedural | conv | procedural/conv/classifier/model.keras |  | normal | test | "
            "MSE per pixel | 1234.50 ± 6.78 |  | 10 | 40 | 3.5 | "
            "procedural/conv/inverters/mse/fc3/inverter.keras |") in md
    assert ("| fc3 | pixelcnn | procedural | conv | procedural/conv/classifier/model.keras |  | normal | test | "
            "NLL nats | 234.57 ± 1.25 | 0.8461 | 48 |") in md
    assert "MSE decoders" not in md
    # Comparisons: Table 1 across layers, then one table per compare.json with 1NN first.
    assert "| layer | split | n | K | dims | 1NN | pixelcnn IM-S | pixelcnn IM-NN | mse IM-S | mse IM-NN | path |" in md
    assert "| conv1 | test | 20 | 5 | 64 | 80.00 ± 2.00 | 60.00 ± 1.50 | 50.00 ± 1.00 |  |  | " in md
    assert ("| fc3 | test | 20 | 5 | 64 | 40.00 ± 2.00 | 30.00 ± 1.50 | 20.00 ± 1.00 | 25.00 ± 1.50 | "
            "25.00 ± 1.00 | ") in md
    fc3_table = md.split("### procedural/conv/compare/fc3: layer fc3, test split")[1].split("\n\n")[1].splitlines()
    assert fc3_table[2:] == [
        "| 1NN (training) |  |  |  | 40.00 ± 2.00 | 0.625 ± 0.031 |  |  |  |  |  |",
        "| pixelcnn | pixelcnn | 30.00 ± 1.50 | 0.469 ± 0.023 | 20.00 ± 1.00 | 0.312 ± 0.016 | 90.0 ± 5.0% | "
        "640.00 ± 32.00 | 500.00 ± 50.00 | 12.00 ± 1.20 | 234.57 ± 1.25 |",
        "| mse | mse | 25.00 ± 1.50 | 0.391 ± 0.023 | 25.00 ± 1.00 | 0.391 ± 0.016 | 85.0 ± 5.0% | 640.00 ± 32.00 | "
        "0.00 ± 0.00 | 0.00 ± 0.00 |  |",
    ]
    assert "a diversity of 0 means a point estimate" in md
    # The top-k grids of a comparison side by side, in its rows' order; samples captioned with their kinds.
    assert re.search(r"\| !\[[^\]]*\]\([^)]*fc3/compare_topk_pixelcnn.png\) \| "
                     r"!\[[^\]]*\]\([^)]*fc3/compare_topk_mse.png\) \|", md)
    assert html.count('<div class="figures">') == 1
    assert "layer fc3, pixelcnn inverter: 2 samples per input" in md
    assert "layer fc3: input | mse reconstruction | samples of the pixelcnn inverter; reconstruction MSE 987.6" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert any(link.endswith("inverters/fc3/samples.png") for link in links)
    assert "report-nce-over-training.png" in links
    for link in links:
        assert not Path(link).is_absolute() and (md_path.parent / link).is_file(), link
    assert "invkeras train-inverter --layer fc3 --seed 7" in md
    # Written with metadata; no temporary files; a rerun in place ignores the previous report.
    assert artifacts.read_metadata(html_path)["kind"] == "report"
    assert artifacts.read_metadata(md_path)["results"]["kinds"]["inverter"] == 9
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


def test_a_checkpoints_seeds_are_one_point_over_training_with_the_seed_interval(fake_run, tmp_path):
    run = fake_run / "procedural" / "conv"
    where = run / "dynamics" / "s100"
    checkpoint = run / "classifier" / "checkpoints" / "step-000100.keras"
    inverter(where / "fc3-seed1", "fc3", checkpoint, 230.0)
    mi_table(where / "mi" / "test.json", {"fc3": (where / "fc3", 240.0)})
    table = json.loads((where / "mi" / "test.json").read_text())
    table["rows"][0].update({"n_seeds": 2, "seeds": [0, 1], "se seeds+images nats": 3.0})
    artifacts.write_json_atomic(where / "mi" / "test.json", table)
    write_report(fake_run, out=tmp_path / "r.html")
    (line,) = [d for d in artifacts.read_metadata(tmp_path / "r-nce-over-training.png")["data"]
               if (d["layer"], d["regime"]) == ("fc3", "normal")]
    assert [p for p in line["points"] if p["step"] == 100] == [{"step": 100, "nce": -240.0, "se": 3.0}]
    assert [p["step"] for p in line["points"]] == [0, 100, 1000]


def test_the_distance_table_says_what_label_agreement_shows_across_the_classifiers_chain(tiny_classifier, tmp_path):
    import shutil

    run = tmp_path / "runs" / "procedural" / "conv"
    shutil.copytree(tiny_classifier / "procedural/conv/classifier", run / "classifier")
    spread = np.array([0.3, -0.2, 0.1, -0.4, 0.2, 0.0, -0.1, 0.1]) / 10  # mean 0
    for layer, share in (("fc3", 0.95), ("conv1", 0.5)):  # written deep first: the order is the graph's
        folder = run / "comparisons" / layer
        comparison(folder, layer, [compare_row(run / "inverters" / layer, "pixelcnn", 30.0, 20.0)])
        np.savez(folder / "compare.npz", label_agreement_pixelcnn=np.full(8, share) + spread)
    html, _ = write_report(tmp_path / "runs", out=tmp_path / "r.html")
    text = html.read_text()
    assert "Label agreement across conv1 → fc3: pixelcnn: samples of fc3 keep the label more often than those " \
           "of conv1" in text
    np.savez(run / "comparisons" / "conv1" / "compare.npz", label_agreement_pixelcnn=np.full(8, 0.95) + spread)
    html, _ = write_report(tmp_path / "runs", out=tmp_path / "r.html")
    assert ("Label agreement across conv1 → fc3: no two layers differ beyond the 95% interval of their "
            "difference.") in html.read_text()


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


# --- extending the report without editing it ----------------------------------------


@register_section(order=65, kinds=("toy-analysis",))
def toy_analysis_sections(contents, out_stem):
    """A section a new command would register from its own module: one per toy analysis found."""
    return [Section(f"Toy analysis {a.meta.get('label')}", intro="What a toy analysis measured.",
                    tables=[Table("scores", ["path", "score"], [[a.rel, fmt(a.results.get("score"), 3)]])],
                    provenance=[a]) for a in contents.of_kind("toy-analysis")]


def _section(text: str, title: str, level: str = "## ") -> str:
    """A Markdown section's text, from its heading to the next heading of the same level."""
    return text.split(f"\n{level}{title}\n")[1].split(f"\n{level}")[0]


def test_a_section_registered_elsewhere_appears(fake_run, tmp_path):
    for label, score in (("a", 0.5), ("b", 0.25)):
        path = artifacts.write_json_atomic(fake_run / "procedural" / "conv" / "toy" / f"{label}.json", {"x": 1})
        artifacts.write_metadata(path, kind="toy-analysis", command=f"toy-tool {label}", label=label,
                                 results={"score": score})
    html_path, md_path = write_report(fake_run, out=tmp_path / "r.html")
    html, md = html_path.read_text(), md_path.read_text()
    titles = artifacts.read_metadata(html_path)["results"]["sections"]
    # In the order it asked for: after the samples (60), before anything later, and "Other artefacts" last.
    assert titles == ["Classifiers", "Inverters", "Information estimates", "Plots", "Representation-space distances",
                      "Samples", "Toy analysis a", "Toy analysis b", "Other artefacts"]
    assert "| procedural/conv/toy/b.json | 0.250 |" in _section(md, "Toy analysis b")
    assert "<h2 id=\"s6\">Toy analysis a</h2>" in html and "toy-tool a" in html and "0.500" in html
    # Its kind is claimed, so not listed again; unregistered kinds still are.
    other = _section(md, "Other artefacts")
    assert "toy-analysis" not in other and "bespoke-analysis" in other and "score=0.0123" in other
    assert "toy-analysis" not in html.split("Other artefacts</h2>")[1]
    assert [(r.order, r.kinds) for r in registered_sections() if r.builder is toy_analysis_sections] == [
        (65, ("toy-analysis",))]


def test_an_inverter_kind_the_report_never_heard_of(tmp_path):
    """A kind defined only by its metadata (here 'toy') gets its row, headline, comparison row and captions."""
    run = tmp_path / "runs" / "procedural" / "conv"
    model = classifier(run, accuracy=0.9)
    inverter(run / "inverters" / "fc3", "fc3", model, 234.5678)
    inverter(run / "inverters" / "none", "none", None, 300.25)
    toy_summary = {"n": 12, "toy_loss": 0.0123, "headline": {"name": "toy loss", "value": 0.0123, "se": 0.0004}}
    any_inverter(run / "inverters" / "toy" / "fc3", "fc3", model, "toy", toy_summary, capabilities=("sample",))
    comparison(run / "compare" / "fc3", "fc3", [
        compare_row(run / "inverters" / "fc3", "pixelcnn", 30.0, 20.0, nll=234.5678),
        compare_row(run / "inverters" / "toy" / "fc3", "toy", 35.0, 22.0, label="toy-v2", agreement=None),
    ])
    grid = save_grid(run / "inverters" / "toy" / "fc3" / "samples.png", [[np.zeros((8, 8, 1), np.uint8)] * 3])
    artifacts.write_metadata(grid, kind="inversion-samples", layer="fc3", inverter_kind="toy", seed=1,
                             config={"num_inputs": 1, "num_samples": 2, "split": "test"})

    html_path, md_path = write_report(tmp_path / "runs", out=tmp_path / "r.html")
    md = md_path.read_text()
    inverters = _section(md, "Inverters")
    assert ("| fc3 | toy | procedural | conv | procedural/conv/classifier/model.keras |  | normal | test | toy loss | "
            "0.0123 ± 0.0004 |  | 12 | 40 | 3.5 | procedural/conv/inverters/toy/fc3/inverter.keras |") in inverters
    distances = _section(md, "Representation-space distances")
    assert "| 1NN | pixelcnn IM-S | pixelcnn IM-NN | toy-v2 IM-S | toy-v2 IM-NN |" in distances
    assert ("| toy-v2 | toy | 35.00 ± 1.50 | 0.547 ± 0.023 | 22.00 ± 1.00 | 0.344 ± 0.016 |  | 640.00 ± 32.00 | "
            "500.00 ± 50.00 | 12.00 ± 1.20 |  |") in distances
    assert "compare_topk_toy-v2.png" in distances
    assert "layer fc3, toy inverter: 2 samples per input" in _section(md, "Samples")
    # NCE needs a pixel likelihood: the toy inverter is not drawn, nor listed as unknown.
    drawn = artifacts.read_metadata(tmp_path / "r-nce-by-layer.png")["data"]
    assert [p["layer"] for g in drawn for p in g["points"]] == ["fc3", "none"]
    assert "Other artefacts" not in md


def test_legacy_metadata_still_renders(tmp_path):
    """Workspaces written before inverters had kinds: PixelCNN 'inverter's, 'mse-decoder's, old comparisons."""
    run = tmp_path / "runs" / "procedural" / "conv"
    model = classifier(run, accuracy=0.9)
    legacy = {"n": 48, "nll_nats": 234.5678, "se_nats": 1.25, "bits_per_dim": 0.8461}
    path = run / "inverters" / "fc3" / "inverter.keras"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    artifacts.write_metadata(path, kind="inverter", layer="fc3", config={"dataset": "procedural", "arch": "conv"},
                             data={"classifier": str(model)}, results={"validation": legacy, "test": None, "steps": 40})
    decoder = run / "decoders" / "fc3" / "decoder.keras"
    decoder.parent.mkdir(parents=True)
    decoder.write_bytes(b"x")
    artifacts.write_metadata(decoder, kind="mse-decoder", command="invkeras train-inverter --kind mse", layer="fc3",
                             config={"dataset": "procedural", "arch": "conv", "layer": "fc3"},
                             data={"classifier": str(model.parent.parent), "dataset": "procedural"},
                             results={"test": {"mse_per_pixel": 1234.5, "se": 6.78, "n": 10}, "steps": 9})
    grid = save_grid(run / "inverters" / "fc3" / "samples_mse.png", [[np.zeros((8, 8, 1), np.uint8)] * 3])
    artifacts.write_metadata(grid, kind="inversion-samples-with-mse", layer="fc3", config={"inverter": str(path)},
                             results={"reconstruction_mse_per_pixel": 987.65})
    # compare.json before one-row-per-inverter: one row per method; its inverter's kind comes from the inverter.
    rows = [{"method": m, "n": 10, "mean_l1": v, "se": 0.5, "mean_l1_per_dim": v / 64, "se_per_dim": 0.5 / 64}
            for m, v in (("1NN", 40.0), ("IM-S", 30.0), ("IM-NN", 20.0), ("MSE", 25.0))]
    facts = {"layer": "fc3", "split": "test", "n_images": 10, "samples_per_image": 5, "feature_dims": 64,
             "training_examples_searched": 512, "distance": "L1 (sum over features)"}
    old = artifacts.write_json_atomic(run / "inverters" / "fc3" / "compare.json", {**facts, "rows": rows})
    artifacts.write_metadata(old, kind="representation-comparison", config={"inverter": str(path)},
                             results={"rows": rows}, **facts)
    broken = run / "elsewhere" / "compare.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    artifacts.write_metadata(broken, kind="representation-comparison", config={})

    html_path, md_path = write_report(tmp_path / "runs", out=tmp_path / "r.html")
    md = md_path.read_text()
    inverters = _section(md, "Inverters")
    assert ("| fc3 | mse | procedural | conv | procedural/conv/classifier/model.keras |  | normal | test | "
            "MSE per pixel | 1234.50 ± 6.78 |  | 10 | 9 |  | "
            "procedural/conv/decoders/fc3/decoder.keras |") in inverters
    assert ("| fc3 | pixelcnn | procedural | conv | procedural/conv/classifier/model.keras |  | normal | validation | "
            "NLL nats | 234.57 ± 1.25 | 0.8461 | 48 | 40 |") in inverters
    assert "recorded as mse-decoder" in inverters and "MSE decoders" not in md
    distances = _section(md, "Representation-space distances")
    assert "| 1NN | pixelcnn IM-S | pixelcnn IM-NN | path |" in distances
    assert "| method | n | mean L1 ± SE | per dim ± SE |" in distances and "| MSE | 10 | 25.00 ± 0.50 |" in distances
    assert "input | mse reconstruction | samples of the pixelcnn inverter" in _section(md, "Samples")
    assert "elsewhere/compare.json: comparison unreadable" in _section(md, "Other artefacts")
    assert artifacts.read_metadata(tmp_path / "r-nce-by-layer.png")["data"][0]["points"][0]["layer"] == "fc3"


def test_inverter_metadata_normalisation():
    assert inverter_metadata({"kind": "classifier"}) is None
    legacy = inverter_metadata({"kind": "inverter", "results": {"test": {"n": 3, "nll_nats": 5.0, "se_nats": 0.5},
                                                                "steps": 2}})
    assert (legacy["inverter_kind"], legacy["capabilities"]) == ("pixelcnn", ["pixel_log_prob", "sample"])
    assert legacy["results"]["test"]["headline"] == {"name": "NLL nats", "value": 5.0, "se": 0.5}
    decoder = inverter_metadata({"kind": "mse-decoder", "results": {"validation": {"mse_per_pixel": 9.0, "se": 1.0}}})
    assert (decoder["kind"], decoder["recorded_kind"], decoder["inverter_kind"]) == ("inverter", "mse-decoder", "mse")
    assert decoder["results"]["validation"]["headline"]["name"] == "MSE per pixel"
    current = {"kind": "inverter", "inverter_kind": "gan", "capabilities": ["sample"],
               "results": {"test": {"n": 1, "headline": {"name": "FID", "value": 3.0, "se": 0.1}}}}
    assert inverter_metadata(current) == current


@pytest.mark.slow
def test_report_of_a_real_tiny_run(tiny_inverters, tiny_classifier, tmp_path):
    html_path, md_path = write_report(tiny_classifier, out=tmp_path / "tiny.html")
    html = html_path.read_text()
    meta = artifacts.read_metadata(artifacts.classifier_path("procedural", "conv", tiny_classifier))
    assert f"{meta['results']['test_accuracy']:.4f}" in html
    for name, result in tiny_inverters.items():
        headline = (result.test or result.validation)["headline"]
        assert headline["name"] in html and f"{headline['value']:.2f} ± {headline['se']:.2f}" in html, name
    assert "NCE by layer" in html and "Classifier test accuracy" in html and "data:image/png;base64," in html
    assert "<details>" in html and "procedural/conv/inverters/pixelcnn/fc3/inverter.keras" in html
    assert "procedural/conv/inverters/mse/fc3/inverter.keras" in html
    assert (tmp_path / "tiny-nce-by-layer.png").is_file() and md_path.is_file()


# --- the paper's recipes ------------------------------------------------------------------


EXPECTED_RECIPES = ["architectures_affnist", "information_mnist", "layers_cifar10", "layers_mnist", "layers_svhn",
                    "training_dynamics_mnist"]
OFFLINE_SMALL = {"architectures_affnist", "information_mnist", "layers_mnist", "training_dynamics_mnist"}  # small variants run on MNIST


def _check_inputs_are_trained_first(recipe, label):
    """Every inverter or decoder a sample/compare/estimate-mi step reads is made by an earlier step."""
    made = set()
    for name, step in recipe.steps.items():
        if step.command == "train-inverter":
            made.add(step.out_dir())
        if step.command in ("sample", "compare", "estimate-mi"):
            used = ([inverter for _, inverter in step.rows()] if step.command == "estimate-mi"
                    else [step.inverter(layer) for layer in step.layers])
            if getattr(step, "reconstruction", None):
                used += [step.inverter(layer, step.reconstruction) for layer in step.layers]
            if step.command == "compare":
                used += [step.inverter(layer, kind) for layer in step.layers for kind in step.compared_kinds()]
            if step.command == "estimate-mi" and step.unconditional:
                used.append(step.inverter("none"))
            assert set(used) <= made, (label, name)


def _inverter_steps(recipe, kind):
    return [s for s in recipe.steps.values() if s.command == "train-inverter" and s.kind == kind]


def test_paper_recipes_validate():
    from invkeras.recipes import load_recipe

    assert sorted(p.stem for p in PAPER_RECIPES.glob("*.yaml")) == EXPECTED_RECIPES
    for path in sorted(PAPER_RECIPES.glob("*.yaml")):
        paper = load_recipe(path)
        small = load_recipe(path, ["scale=small"])  # the documented small run is exactly this
        assert paper.scale == "paper" and small.scale == "small", path.name
        written = [n for n in paper.steps if not re.search(r"-seed\d+$", n)]  # `seeds: N` adds NAME-seed<s>
        assert written == list(yaml.safe_load(path.read_text())["steps"])
        assert [n for n in paper.steps if n in small.steps] == list(small.steps)  # a variant only drops steps
        commands = [step.command for step in paper.steps.values()]
        first_inverter = commands.index("train-inverter")
        assert set(commands[:first_inverter]) <= {"train-classifier", "extract"}, path.name
        assert "train-classifier" not in commands[first_inverter:], path.name  # classifiers come first
        assert "estimate-mi" in commands and commands.index("estimate-mi") > first_inverter, path.name
        for name, step in paper.steps.items():
            if step.command == "train-classifier":
                assert step.learning_rate == 3e-4, name
            if step.command == "train-inverter" and step.kind == "pixelcnn":
                assert (step.scale, step.learning_rate, step.lr_decay) == ("paper", 1e-3, 0.9999), name
                if name in small.steps:
                    assert small.steps[name].scale in ("small", "tiny") and small.steps[name].max_steps <= 1500, name  # < 1 h per inverter on 2 cores
        if path.stem in OFFLINE_SMALL:  # datasets named as users name them: the small variant keeps the paper's
            assert all(s.dataset == paper.dataset or s.dataset.endswith(":mnist")
                       for s in small.steps.values() if hasattr(s, "dataset"))
        _check_inputs_are_trained_first(paper, path.name)
        _check_inputs_are_trained_first(small, path.name + " (small)")
        assert json.loads(paper.model_dump_json())["name"].startswith("nash2019-")


def test_paper_recipes_match_the_paper():
    from invkeras.recipes import load_recipe

    for key in ("mnist", "svhn", "cifar10"):
        recipe = load_recipe(PAPER_RECIPES / f"layers_{key}.yaml")
        assert recipe.dataset == {"mnist": "mnist", "svhn": "svhn_cropped", "cifar10": "cifar10"}[key]
        inverters = {s.layer: s for s in _inverter_steps(recipe, "pixelcnn")}
        assert set(inverters) == {"conv1", "conv2", "fc3", "logits", "none"}
        decoders = {s.layer for s in _inverter_steps(recipe, "mse")}
        assert decoders == {"conv1", "conv2", "fc3", "logits"}
        assert recipe.steps["distances"].num_images == 500 and recipe.steps["distances"].num_samples == 10
        assert inverters["fc3"].h_dropout == (0.2 if key == "cifar10" else None)
        assert recipe.steps["information"].reference == "conv1"

    affnist = load_recipe(PAPER_RECIPES / "architectures_affnist.yaml")
    assert affnist.dataset == "affnist"
    archs = {s.arch for s in affnist.steps.values() if s.command == "train-classifier"}
    assert archs == {"conv", "conv-gpool", "fc"}
    fc3 = {s.arch for s in _inverter_steps(affnist, "pixelcnn") if s.layer == "fc3"}
    assert fc3 == archs and {s.arch for s in affnist.steps.values() if s.command == "estimate-mi"} == archs
    decoders = {s.arch for s in _inverter_steps(affnist, "mse")}
    assert decoders == archs  # an MSE decoder of FC3 beside each inverter

    dynamics = load_recipe(PAPER_RECIPES / "training_dynamics_mnist.yaml")
    classifiers = {n: s for n, s in dynamics.steps.items() if s.command == "train-classifier"}
    normal, overfitted = classifiers["classifier_normal"], classifiers["classifier_overfitted"]
    assert normal.save_at == overfitted.save_at == [0, 100, 1000, 10000, 100000]
    assert (overfitted.train_examples, overfitted.dropout) == (100, False) and normal.dropout
    assert normal.model_path() != overfitted.model_path()
    assert normal.steps_per_epoch == overfitted.steps_per_epoch == 1000 and normal.epochs * 1000 == 100000
    inverters = _inverter_steps(dynamics, "pixelcnn")
    checkpoints = {(s.model, s.layer) for s in inverters}
    for classifier_step in (normal, overfitted):
        for step in classifier_step.save_at:
            for layer in ("conv1", "fc3"):
                model = str(classifier_step.model_path().parent / "checkpoints" / f"step-{step:06d}.keras")
                assert (model, layer) in checkpoints
    assert len({s.out_dir() for s in inverters}) == len(inverters) == 20
    assert len({s.arch for s in inverters}) == 10  # each checkpoint's run: features of two never collide
    # Enough steps for the last checkpoint in both regimes: epochs x steps_per_epoch, paper and small.
    small = load_recipe(PAPER_RECIPES / "training_dynamics_mnist.yaml", ["scale=small"])
    for recipe in (dynamics, small):
        last = max(recipe.steps["classifier_normal"].save_at)
        for name in ("classifier_normal", "classifier_overfitted"):
            step = recipe.steps[name]
            assert step.epochs * step.steps_per_epoch >= last and step.patience >= step.epochs, name
    assert max(small.steps["classifier_normal"].save_at) == 10000 and small.dataset == "mnist"
