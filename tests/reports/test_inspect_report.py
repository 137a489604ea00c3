"""The inspect report: its reading paragraph, its sections and files, and the page in a real browser."""

from __future__ import annotations

import json
import re
from html import escape
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from invkeras import artifacts
from invkeras.reports.grids import save_grid
from invkeras.reports.inspect_report import InspectFacts, LayerFacts, ModelRow, reading, write_inspect_report

LAYERS = (("conv1", "conv block", (8, 8, 32)), ("logits", "logits", (5,)))


def _stat(mean, se):
    return {"mean": mean, "se": se}


def _grid(path: Path, meta: dict, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = [[rng.integers(0, 256, (20, 20, 1), dtype=np.uint8) for _ in range(4)] for _ in range(2)]
    save_grid(path, rows)
    artifacts.write_metadata(path, seed=0, **meta)
    return path


def _comparison(out: Path, layer: str, diversity: float, agreement: float, kinds=("pixelcnn", "mse")) -> Path:
    directory = out / "comparisons" / layer
    rows = []
    for kind in kinds:
        sampled = kind != "mse"
        rows.append({"label": kind, "kind": kind, "IM-S": {"mean_l1": 3.0, "se": 0.2},
                     "IM-NN": {"mean_l1": 2.0, "se": 0.1}, "label_agreement": _stat(agreement, 0.02),
                     "diversity_pixel_l1": _stat(diversity if sampled else 0.0, 10.0 if sampled else 0.0),
                     "pixel_l1_to_input": _stat(900.0, 30.0), "nll_nats": _stat(2.5, 0.1) if sampled else None})
    payload = {"layer": layer, "split": "test", "n_images": 16, "samples_per_image": 2, "feature_dims": 10,
               "training_examples_searched": 100, "nearest_training": {"mean_l1": 1.5, "se": 0.2}, "rows": rows}
    path = artifacts.write_json_atomic(directory / "compare.json", payload)
    artifacts.write_text_atomic(directory / "compare.csv", "label\npixelcnn\n")
    config = {"inverters": [str(out / "inverters" / k / layer / "inverter.keras") for k in kinds], "num_images": 16,
              "num_samples": 2, "top_k": 4, "grid_samples": 16, "grid_inputs": 2, "seed": 0}
    artifacts.write_metadata(path, kind="representation-comparison", config=config, seed=0, layer=layer)
    _grid(directory / f"compare_topk_{kinds[0]}.png", {"kind": "representation-comparison", "config": config,
                                                       "label": kinds[0], "layer": layer})
    return path


def _information(out: Path, differences=(0.0, -5.5)) -> Path:
    rows = []
    for (layer, _, _), difference, nll in zip(LAYERS, differences, (2.0, 7.5)):
        rows.append({"layer": layer, "n_images": 100, "H*(x|h) nats": nll, "se nats": 0.1, "ci95 low": nll - 0.2,
                     "ci95 high": nll + 0.2, "bits/dim": nll / 277, "NCE nats": -nll, "NCE - NCE(ref)": difference,
                     "se (paired)": 0.0 if difference == 0 else 0.2, "H*(x) - H*(x|h) [estimate]": 9.7 - nll,
                     "H(x) - H*(x|h) [lower bound on I]": 8.841 - nll, "note": None})
    rows.append({"layer": "none", "n_images": 100, "H*(x|h) nats": 9.7, "se nats": 0.05, "NCE nats": -9.7})
    path = artifacts.write_json_atomic(out / "mi" / "test.json", {"split": "test", "dataset": "procedural",
                                                                  "entropy_nats": 8.841, "rows": rows})
    artifacts.write_text_atomic(out / "mi" / "test.csv", "layer\nconv1\n")
    artifacts.write_metadata(path, kind="mi-estimate", config={"reference": "conv1"}, seed=0)
    return path


def make_facts(out: Path, *, kinds=("pixelcnn", "mse"), agreement=0.95, accuracy=0.975) -> InspectFacts:
    layers = []
    for (name, role, shape), diversity in zip(LAYERS, (500.0, 1500.0)):
        grids = []
        for kind in kinds:
            inverter = out / "inverters" / kind / name
            config = {"inverter": str(inverter / "inverter.keras"), "num_inputs": 2, "num_samples": 3, "seed": 0}
            grids.append(_grid(inverter / "samples.png", {"kind": "inversion-samples", "config": config,
                                                         "layer": name, "inverter_kind": kind}))
        if "mse" in kinds and kinds[0] != "mse":
            config = {"inverter": str(out / "inverters" / kinds[0] / name / "inverter.keras"), "num_inputs": 2,
                      "num_samples": 3, "reconstructor": str(out / "inverters" / "mse" / name / "inverter.keras")}
            grids.append(_grid(out / "inverters" / kinds[0] / name / "samples_reconstruction.png",
                               {"kind": "inversion-samples-with-reconstruction", "config": config, "layer": name,
                                "inverter_kind": kinds[0], "reconstruction_kind": "mse",
                                "results": {"reconstruction_mse_per_pixel": 400.0}}))
        comparison = _comparison(out, name, diversity, agreement, kinds)
        layers.append(LayerFacts(name, role, shape, grids, comparison,
                                 sorted(comparison.parent.glob("compare_topk_*.png"))))
    information = _information(out) if "pixelcnn" in kinds else None
    artifacts.write_json_atomic(out / "inspect.json", {"spent": 100.0})
    (out / "classifier.keras").write_bytes(b"model")
    models = [ModelRow("pixelcnn", "conv1", 500, 480, 60.0, 58.0, "time cap", {"name": "NLL nats", "value": 2.0,
                                                                               "se": 0.1})]
    return InspectFacts(out_dir=out, model="classifier_conv", model_path="my_classifier.keras", dataset="procedural",
                        budget=360.0, spent=340.0, seed=0, command="invkeras inspect --model my_classifier.keras",
                        kinds=list(kinds), layers=layers, information=information, entropy_nats=8.841,
                        accuracy=accuracy, models=models, calibration={"pixelcnn": 0.15})


def test_the_reading_says_what_the_deepest_layer_keeps_in_plain_words(tmp_path):
    text = reading(make_facts(tmp_path))
    assert text.startswith("The deepest layer inverted, logits (5 values), still carries the class: the classifier "
                           "gives 95% of the images sampled from it (pixelcnn) the label")
    assert "It keeps 5.50 ± 0.20 nats less information about the image than conv1" in text
    assert "the images carry exactly 8.84 nats each" in text
    assert "3.0 times as much as conv1's" in text and "1,500 against 500" in text
    assert text.endswith("The classifier labels 97.5% of the test images correctly.")


def test_the_reading_says_what_it_cannot_say_without_pixelcnn_or_class_agreement(tmp_path):
    text = reading(make_facts(tmp_path, kinds=("mse",), agreement=0.3))
    assert "no longer pins down the class" in text and "There is no information estimate" in text
    assert "Only a point estimate (mse) samples it, and it has no diversity" in text


def test_the_report_links_its_png_files_and_shows_each_figures_command_and_seed(tmp_path):
    facts = make_facts(tmp_path / "inspect")
    html_path, md_path, text = write_inspect_report(facts)
    html = html_path.read_text()
    assert "data:image" not in html and escape(text) in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert sources and all((html_path.parent / s).is_file() for s in sources)
    # the samples beside the MSE reconstruction stand for the plain grid of the same samples
    assert "inverters/pixelcnn/conv1/samples_reconstruction.png" in sources
    assert "inverters/pixelcnn/conv1/samples.png" not in sources
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert len(captions) == len(sources) and all("(seed 0)" in c and "rawn by `invkeras" in c for c in captions)
    assert "invkeras sample-grid --inverter" in html and "invkeras compare --inverter" in html
    links = re.findall(r'<a href="([^"#]+)"', html)
    assert {"mi/test.json", "comparisons/conv1/compare.json", "inspect.json", "classifier.keras"} <= set(links)
    assert all((html_path.parent / link).is_file() for link in links)
    markdown = md_path.read_text()
    assert "## Reading" in markdown and "](inverters/pixelcnn/logits/samples_reconstruction.png)" in markdown
    assert (html_path.parent / "report-nce-by-layer.png").is_file()


CHECK_SCRIPT = """
<script>
window.addEventListener("load", function () {
  var broken = [];
  document.querySelectorAll("img").forEach(function (img) {
    if (!(img.complete && img.naturalWidth > 0)) broken.push("img " + img.getAttribute("src"));
  });
  document.querySelectorAll("a[href]").forEach(function (a) {
    var href = a.getAttribute("href");
    if (href.charAt(0) === "#") {
      if (!document.getElementById(href.slice(1))) broken.push("anchor " + href);
      return;
    }
    try {
      var request = new XMLHttpRequest();
      request.open("GET", href, false);
      request.send();
      if (request.status !== 0 && request.status !== 200) broken.push("link " + href);
    } catch (error) { broken.push("link " + href); }
  });
  var out = document.createElement("pre");
  out.id = "page-check";
  out.textContent = JSON.stringify({images: document.images.length, links: document.links.length, broken: broken});
  document.body.appendChild(out);
});
</script>
"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless browser: install Debian's chromium (apt-get install -y chromium) to check the page")


def test_the_report_loads_every_image_and_link_in_a_real_browser(tmp_path):
    browser = _chromium()
    html_path, _, _ = write_inspect_report(make_facts(tmp_path / "inspect"))
    checked = html_path.with_name("report-check.html")  # beside it, so relative paths resolve the same
    checked.write_text(html_path.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--allow-file-access-from-files", "--virtual-time-budget=10000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", checked.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    found = re.search(r'<pre id="page-check">(.*?)</pre>', dom, re.S)
    assert found, "the page's check did not run"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["broken"] == [] and result["images"] == 7 and result["links"] >= 10
    screenshot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={screenshot}",
                    html_path.as_uri()], capture_output=True, timeout=120)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


def test_a_missing_image_is_caught_by_the_browser_check(tmp_path):
    browser = _chromium()
    html_path, _, _ = write_inspect_report(make_facts(tmp_path / "inspect"))
    (html_path.parent / "report-nce-by-layer.png").unlink()
    checked = html_path.with_name("report-check.html")
    checked.write_text(html_path.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                          checked.as_uri()], capture_output=True, text=True, timeout=120).stdout
    result = json.loads(re.search(r'<pre id="page-check">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    assert result["broken"] == ["img report-nce-by-layer.png"]
