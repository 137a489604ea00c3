"""Reliability: each class of bad input is refused as a class, in one line with exit code 2,
before anything is written outside the workspace and without losing anything already there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cli_errors import assert_one_line_error  # tests/cli_errors.py
from invkeras.cli import app

runner = CliRunner()

# Deep enough that every '../' value below lands inside the test's own tmp_path.
NESTING = ("n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8")
UP = "../" * 8


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- 1. every name that becomes part of a path is a plain name -----------------------------

# (top-level keys, step) of recipes in which `FIELD` is replaced by the value under test: every
# recipe field whose value becomes a folder or file name of the workspace layout.
PATH_FIELDS = {
    "recipe arch": ({"arch": "FIELD"}, {"command": "train-inverter", "layer": "fc3"}),
    "recipe dataset": ({"dataset": "FIELD"}, {"command": "extract", "layers": ["fc3"]}),
    "train-classifier run": ({}, {"command": "train-classifier", "run": "FIELD"}),
    "extract layers": ({}, {"command": "extract", "layers": ["fc3", "FIELD"]}),
    "extract arch": ({}, {"command": "extract", "arch": "FIELD", "layers": ["fc3"]}),
    "train-inverter layer": ({}, {"command": "train-inverter", "layer": "FIELD"}),
    "train-inverter arch": ({}, {"command": "train-inverter", "arch": "FIELD"}),
    "train-inverter kind": ({}, {"command": "train-inverter", "kind": "FIELD"}),
    "train-autoencoder name": ({}, {"command": "train-autoencoder", "name": "FIELD"}),
    "sample layers": ({}, {"command": "sample", "layers": ["FIELD"]}),
    "sample arch": ({}, {"command": "sample", "arch": "FIELD", "layers": ["fc3"]}),
    "sample kind": ({}, {"command": "sample", "kind": "FIELD", "layers": ["fc3"]}),
    "sample reconstruction": ({}, {"command": "sample", "reconstruction": "FIELD", "layers": ["fc3"]}),
    "compare layers": ({}, {"command": "compare", "layers": ["FIELD"], "kinds": ["pixelcnn", "mse"]}),
    "compare kinds": ({}, {"command": "compare", "layers": ["fc3"], "kinds": ["pixelcnn", "FIELD"]}),
    "estimate-mi layers": ({}, {"command": "estimate-mi", "layers": ["conv1", "FIELD"]}),
    "estimate-mi arch": ({}, {"command": "estimate-mi", "arch": "FIELD", "layers": ["fc3"]}),
    "estimate-mi archs": ({}, {"command": "estimate-mi", "archs": ["conv", "FIELD"], "layers": ["fc3"]}),
    "edit layers": ({}, {"command": "edit", "layers": ["FIELD"], "shift": "1:5"}),
    "edit subdir": ({}, {"command": "edit", "layers": ["logits"], "shift": "1:5", "subdir": "FIELD"}),
    "mix layers": ({}, {"command": "mix", "kind": "cinn", "layers": ["FIELD"]}),
    "attack layers": ({}, {"command": "attack", "kind": "cinn", "layers": ["FIELD"], "epsilon": 0.1}),
    "train-factors layers": ({}, {"command": "train-factors", "layers": ["FIELD"]}),
    "edit-factors layers": ({}, {"command": "edit-factors", "layers": ["FIELD"]}),
    "score-factors arch": ({}, {"command": "score-factors", "arch": "FIELD", "layers": ["fc3"]}),
    "score-factors layers": ({}, {"command": "score-factors", "layers": ["FIELD"]}),
}

# A value that climbs out of the workspace, an absolute path, and a name with a separator.
# The dataset's slug turns '/' into '-', so only a slug of '.' or '..' could make it climb.
BAD_NAMES = {"climbs": UP + "escaped", "absolute": "ABSOLUTE", "separator": "sub/escaped"}


def _fill(value, bad):
    if isinstance(value, dict):
        return {k: _fill(v, bad) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, bad) for v in value]
    return bad if value == "FIELD" else value


def _bad_name(field: str, how: str, outside: Path) -> str:
    if field == "recipe dataset":
        return {"climbs": "..", "absolute": ".", "separator": "..:"}[how]  # '..:' has the slug '..' 
    return str(outside) if BAD_NAMES[how] == "ABSOLUTE" else BAD_NAMES[how]


# The same names given on the command line (a command without a recipe).
COMMAND_LINES = {
    "train-inverter --layer": ["train-inverter", "--layer", UP + "escaped", "--workspace", "WS"],
    "train-inverter --arch": ["train-inverter", "--arch", "sub/escaped", "--workspace", "WS"],
    "train-autoencoder --name": ["train-autoencoder", "--name", "OUTSIDE", "--latent-dim", "4", "--workspace", "WS"],
}
CASES = [("recipe", field, how) for field in PATH_FIELDS for how in BAD_NAMES] + \
        [("command line", name, "") for name in COMMAND_LINES]


@pytest.mark.parametrize("source, field, how", CASES, ids=[" ".join(filter(None, case)) for case in CASES])
def test_a_name_that_would_leave_the_workspace_is_refused_before_anything_is_written(tmp_path, source, field, how):
    outside = tmp_path / "escaped"
    outside.write_text("kept")  # what a climbing or absolute name would have written over
    workspace = tmp_path.joinpath(*NESTING, "ws")
    if source == "recipe":
        top, step = PATH_FIELDS[field]
        bad = _bad_name(field, how, outside)
        recipe = tmp_path / "r.yaml"
        recipe.write_text(yaml.safe_dump({"name": "r", "workspace": str(workspace), **_fill(top, bad),
                                          "steps": {"s": _fill(step, bad)}}))
        argv = ["run", recipe]
    else:
        argv = [{"WS": str(workspace), "OUTSIDE": str(outside)}.get(a, a) for a in COMMAND_LINES[field]]
        bad = argv[2]
    before = files_under(tmp_path)

    result = invoke(*argv)

    # Refused by the schema (a kind must be known) or where the path would be built.
    assert_one_line_error(result, repr(bad) if "kind" not in field and "reconstruction" not in field else bad)
    assert files_under(tmp_path) == before  # nothing written anywhere, nothing lost


# --- 2. a run never writes over the recipe it runs, nor over a file that is not its own ------

SELF_RECIPE = {"name": "selfref", "workspace": "WS", "steps": {"classifier": {"command": "train-classifier",
                                                                               "epochs": 1}}}


def _recipe_text(path: Path, workspace: Path) -> str:
    recipe = json.loads(json.dumps(SELF_RECIPE).replace('"WS"', json.dumps(str(workspace))))
    return json.dumps(recipe) if path.suffix == ".json" else yaml.safe_dump(recipe)


# Where the recipe is kept, and what else is in <workspace>/recipes/ (None: nothing).
RECORD_COLLISIONS = {
    "the recipe is the record (json)": ("ws/recipes/selfref.json", None),
    "the recipe is the record, spelled another way": ("ws/./recipes/../recipes/selfref.json", None),
    "the recipe is the record's metadata": ("ws/recipes/selfref.json.meta.json", None),
    "a user's own file is where the record goes": ("selfref.yaml", ("selfref.json", "my notes\n")),
    "a user's own file is where the record's metadata goes": ("selfref.yaml", ("selfref.json.meta.json", "{}\n")),
    "a folder is where the record goes": ("selfref.yaml", ("selfref.json", None)),
}


@pytest.mark.parametrize("case", list(RECORD_COLLISIONS))
def test_a_run_refuses_to_write_its_record_over_the_recipe_or_a_file_not_its_own(tmp_path, case):
    kept_at, other = RECORD_COLLISIONS[case]
    workspace = tmp_path / "ws"
    recipe = tmp_path / kept_at
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(_recipe_text(recipe, workspace))
    if other is not None:
        name, text = other
        (workspace / "recipes").mkdir(parents=True, exist_ok=True)
        if text is None:
            (workspace / "recipes" / name).mkdir()
        else:
            (workspace / "recipes" / name).write_text(text)
    before = files_under(tmp_path)

    result = invoke("run", recipe)

    assert_one_line_error(result, "record", "selfref.json")
    assert files_under(tmp_path) == before  # the recipe and the user's files intact, no step ran


def test_the_record_of_an_earlier_run_is_replaced_by_the_rerun(tmp_path):
    from invkeras import artifacts

    workspace = tmp_path / "ws"
    model = workspace / "procedural" / "conv" / "classifier" / "model.keras"
    model.parent.mkdir(parents=True)
    model.write_text("a finished classifier")  # complete: the step is skipped
    artifacts.write_metadata(model, kind="classifier")
    recipe = tmp_path / "selfref.yaml"
    recipe.write_text(_recipe_text(recipe, workspace))

    for _ in range(2):
        result = invoke("run", recipe)
        assert result.exit_code == 0, result.output
    record = json.loads((workspace / "recipes" / "selfref.json").read_text())
    assert [step["status"] for step in record["steps"]] == ["skipped"]


# --- 3. input that used to give a silently wrong result --------------------------------------

# (a) A key given twice: YAML keeps the last one without a word.
DUPLICATE_KEYS = {
    "a top-level key": ("name: a\nname: b\nsteps:\n  c: {command: train-classifier}\n", 2, "name"),
    "a step's key": ("name: a\nsteps:\n  c:\n    command: train-classifier\n    epochs: 3\n    epochs: 1\n", 6,
                     "epochs"),
    "a step's name": ("name: a\nsteps:\n  c: {command: train-classifier}\n  c: {command: extract}\n", 4, "c"),
    "a key of a flow mapping": ("name: a\nsteps:\n  c: {command: train-classifier, seed: 1, seed: 2}\n", 3, "seed"),
    "a key of the defaults": ("name: a\ndefaults:\n  train-classifier: {epochs: 1}\n  train-classifier: {epochs: 2}\n"
                              "steps:\n  c: {command: train-classifier}\n", 4, "train-classifier"),
    "a key of a variant": ("name: a\nvariants:\n  small:\n    seed: 1\n    seed: 2\nsteps:\n"
                           "  c: {command: train-classifier}\n", 5, "seed"),
}


@pytest.mark.parametrize("case", list(DUPLICATE_KEYS))
def test_a_key_given_twice_in_a_recipe_is_refused_with_its_line(tmp_path, case):
    text, line, key = DUPLICATE_KEYS[case]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text.replace("name: a\n", f"name: a\nworkspace: {tmp_path / 'ws'}\n", 1))
    before = files_under(tmp_path)

    result = invoke("run", recipe)

    assert_one_line_error(result, str(recipe), f"line {line + 1}", f"duplicate key {key!r}")
    assert files_under(tmp_path) == before


def test_keys_a_merge_brings_in_may_still_be_overridden(tmp_path):
    from invkeras.recipes import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: a\nsteps:\n  c: &base {command: train-classifier, epochs: 3}\n"
                      "  d: {<<: *base, epochs: 1, run: second}\n")
    assert load_recipe(recipe).steps["d"].epochs == 1


# (b) `report --out` naming a folder: the report goes inside it, not beside it.
@pytest.mark.parametrize("out, inside", [("existing", "existing"), ("existing/", "existing"), ("new/", "new"),
                                         ("named.html", None)])
def test_a_report_out_that_is_a_folder_puts_the_report_inside_it(tmp_path, out, inside):
    from invkeras import artifacts

    artifact = tmp_path / "ws" / "thing.json"
    artifact.parent.mkdir()
    artifact.write_text("{}")
    artifacts.write_metadata(artifact, kind="something")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("kept")

    result = invoke("report", tmp_path / "ws", "--out", f"{tmp_path}/{out}")

    assert result.exit_code == 0, result.output
    expected = tmp_path / inside / "report.html" if inside else tmp_path / out
    assert expected.is_file() and expected.with_suffix(".md").is_file()
    assert not (tmp_path / "existing.html").exists() and not (tmp_path / "new.html").exists()
    assert (tmp_path / "existing" / "keep.txt").read_text() == "kept"


# (c) inf and nan: Typer and YAML read them as numbers, and a run on them writes garbage.
NON_FINITE = {
    "attack --pgd-step-size inf": (["attack", "--inverter", "INV", "--epsilon", "0.1", "--pgd-step-size", "inf"],
                                   "--pgd-step-size inf"),
    "edit --noise inf": (["edit", "--inverter", "INV", "--noise", "inf"], "--noise inf"),
    "edit --scale nan": (["edit", "--inverter", "INV", "--scale", "nan"], "--scale nan"),
    "edit --strengths 0,inf": (["edit", "--inverter", "INV", "--strengths", "0,inf"], "--strengths '0,inf'"),
    "edit --shift 1:1e999": (["edit", "--inverter", "INV", "--shift", "1:1e999"], "--shift '1:1e999'"),
    "edit-factors --walk nan,inf": (["edit-factors", "--factors", "INV", "--walk", "nan,inf"], "--walk 'nan,inf'"),
    "train-classifier --learning-rate nan": (["train-classifier", "--learning-rate", "nan", "--workspace", "WS"],
                                            "--learning-rate nan"),
    "train-inverter --learning-rate -inf": (["train-inverter", "--learning-rate", "-inf", "--workspace", "WS"],
                                           "--learning-rate -inf"),
    "train-inverter --kind gan --g-learning-rate inf": (["train-inverter", "--kind", "gan", "--g-learning-rate", "inf",
                                                         "--workspace", "WS"], "g_learning_rate"),
    "a recipe's .inf": (["run", "RECIPE:{command: edit, layers: [logits], noise: .inf}"], "steps.s.noise"),
    "a recipe's 'inf'": (["run", "RECIPE:{command: edit, layers: [logits], scale: 'inf'}"], "steps.s.scale"),
    "a recipe's list with .nan": (["run", "RECIPE:{command: edit, layers: [logits], strengths: [0, .nan]}"],
                                  "steps.s.strengths"),
}


@pytest.mark.parametrize("case", list(NON_FINITE))
def test_a_number_that_is_not_finite_is_refused_before_anything_runs(tmp_path, case):
    argv, fragment = NON_FINITE[case]
    inverter = tmp_path / "inverter"
    inverter.mkdir()
    workspace = tmp_path / "ws"
    args = []
    for a in argv:
        if a.startswith("RECIPE:"):
            recipe = tmp_path / "r.yaml"
            recipe.write_text(f"name: r\nworkspace: {workspace}\nsteps:\n  s: {a[len('RECIPE:'):]}\n")
            a = recipe
        args.append({"INV": inverter, "WS": workspace}.get(a, a))
    before = files_under(tmp_path)

    result = invoke(*args)

    assert_one_line_error(result, fragment)  # one line: no NumPy warning before it either
    assert "finite" in result.output
    assert files_under(tmp_path) == before


# (d) sample-grid with a reconstructor of other data: refused, as compare and estimate-mi refuse.
def _random_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)


def _features_npz(path: Path, seed: int, h_dim: int = 8) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=_random_images(64, seed), h=rng.normal(size=(64, h_dim)).astype(np.float32),
             y=rng.integers(0, 10, 64))
    return path


def _mse(out: Path, **options) -> Path:
    from invkeras.inverters import config_for, inverter_class

    options = dict(max_steps=2, steps_per_checkpoint=2, batch_size=8, eval_examples=8, out=str(out), **options)
    inverter_class("mse").train(config_for("mse", options, given=set(options)), progress=False)
    return out


MISMATCHED_DATA = {
    "user features of other images": ("npz A", "npz B", "different held-out"),
    "a classifier's layer and user features of that layer's shape": ("run fc3", "npz fc3", "different classifiers"),
    "a classifier of another dataset": ("run fc3", "other run fc3", "different classifiers"),
}


@pytest.mark.parametrize("case", list(MISMATCHED_DATA))
def test_sample_grid_refuses_a_reconstructor_of_other_data(tmp_path, tiny_classifier, case):
    from invkeras.classifiers.training import ClassifierConfig, train_classifier

    def inverter(which: str) -> Path:
        out = tmp_path / which.replace(" ", "_")
        if which.startswith("npz"):
            seed = {"npz A": 1, "npz B": 2, "npz fc3": 3}[which]
            h_dim = 256 if which == "npz fc3" else 8
            layer = {"layer": "fc3"} if which == "npz fc3" else {}
            return _mse(out, features=str(_features_npz(tmp_path / f"{seed}.npz", seed, h_dim)), **layer)
        if which == "run fc3":
            return _mse(out, dataset="procedural", layer="fc3", workspace=str(tiny_classifier), train_examples=64)
        images = tmp_path / "other.npz"
        np.savez(images, x=_random_images(256, 5), y=np.arange(256) % 10)
        train_classifier(ClassifierConfig(dataset=f"npz:{images}", arch="conv", epochs=1, batch_size=64,
                                          workspace=str(tmp_path / "other_ws")), progress=False)
        return _mse(out, dataset=f"npz:{images}", layer="fc3", workspace=str(tmp_path / "other_ws"),
                    train_examples=64)

    first, second, fragment = MISMATCHED_DATA[case]
    drawing, reconstructing = inverter(first), inverter(second)
    before = files_under(tmp_path)

    result = invoke("sample-grid", "--inverter", drawing, "--reconstructor", reconstructing, "--num-inputs", 2,
                    "--num-samples", 1, "--split", "validation")

    assert_one_line_error(result, "sample-grid", fragment, str(drawing), str(reconstructing))
    assert files_under(tmp_path) == before  # no grid


# (e) An unfinished run resumed after its input was replaced at the same path.
def _train_until_killed(kind: str, options: dict) -> None:
    from killing import Interrupt, KillAt  # tests/killing.py

    hooks = [KillAt(2, at_checkpoint=True)]
    with pytest.raises(Interrupt):
        if kind == "autoencoder":
            from invkeras.autoencoders.training import AutoencoderConfig, train_autoencoder

            train_autoencoder(AutoencoderConfig(**options), hooks=hooks, progress=False)
        else:
            from invkeras.inverters import config_for, inverter_class

            inverter_class(kind).train(config_for(kind, options, given=set(options)), hooks=hooks, progress=False)


def _autoencoder(tmp_path: Path, seed: int) -> Path:
    from invkeras.autoencoders.training import AutoencoderConfig, train_autoencoder

    images = tmp_path / f"ae_images_{seed}.npz"
    np.savez(images, x=_random_images(64, seed), y=np.arange(64) % 10)
    out = tmp_path / f"ae{seed}"
    train_autoencoder(AutoencoderConfig(dataset=f"npz:{images}", latent_dim=4, filters=4, max_steps=2,
                                        steps_per_checkpoint=2, batch_size=8, out=str(out)), progress=False)
    return out / "autoencoder.keras"


def _replace(path: Path, make) -> None:
    """Write other content at `path`, as a user replacing the file in place would."""
    if path.is_dir():
        shutil.rmtree(path)
    make(path)


CHANGED_INPUTS = {
    "the features .npz of an inverter": "features h",
    "an extract directory's training split": "images x",
    "the autoencoder of a cinn inverter": "latents z",
    "the images of an autoencoder's npz: dataset": "images x",
}


@pytest.mark.parametrize("case", list(CHANGED_INPUTS))
def test_a_resumed_run_whose_input_changed_at_the_same_path_is_refused(tmp_path, case):
    from invkeras.data.features import write_features

    out = tmp_path / "run"
    loop = dict(max_steps=6, steps_per_checkpoint=2, batch_size=8)
    if case == "the features .npz of an inverter":
        data = _features_npz(tmp_path / "features.npz", 1)
        kind, options = "mse", dict(loop, features=str(data), eval_examples=8, out=str(out))
        change = lambda: _features_npz(data, 2)  # noqa: E731
    elif case == "an extract directory's training split":
        data = tmp_path / "features"

        def write(split, seed):
            rng = np.random.default_rng(seed)
            write_features(data / split, layer="fc3", split=split, x=_random_images(32, seed),
                           h=rng.normal(size=(32, 8)), y=rng.integers(0, 10, 32), dataset="mine", config={},
                           seed=0, source="a test")

        write("train", 1)
        write("validation", 3)
        kind, options = "mse", dict(loop, features=str(data), eval_examples=8, out=str(out))
        change = lambda: write("train", 2)  # noqa: E731
    elif case == "the autoencoder of a cinn inverter":
        data, other = _autoencoder(tmp_path, 1), _autoencoder(tmp_path, 2)
        features = _features_npz(tmp_path / "features.npz", 1)
        kind, options = "cinn", dict(loop, features=str(features), autoencoder=str(data), eval_examples=8,
                                     out=str(out))
        change = lambda: shutil.copyfile(other, data)  # noqa: E731
    else:
        data = tmp_path / "images.npz"
        np.savez(data, x=_random_images(64, 1), y=np.arange(64) % 10)
        kind, options = "autoencoder", dict(loop, dataset=f"npz:{data}", latent_dim=4, filters=4, out=str(out))
        change = lambda: np.savez(data, x=_random_images(64, 2), y=np.arange(64) % 10)  # noqa: E731
    _train_until_killed(kind, options)
    assert (out / "backup" / "progress.json").is_file()
    change()
    before = files_under(tmp_path)

    argv = ["train-autoencoder"] if kind == "autoencoder" else ["train-inverter", "--kind", kind]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", value]
    result = invoke(*argv)

    assert_one_line_error(result, "unfinished run on other data", CHANGED_INPUTS[case], str(out / "backup"))
    assert files_under(tmp_path) == before  # the backup kept, the new data untouched


# --- 4. messages that name what the user gave ------------------------------------------------

# (a) A usage error is one line too, not a boxed usage block.
USAGE_ERRORS = {
    "an extra argument": (["kinds", "extra-arg"], "extra-arg"),
    "an option the command lacks": (["datasets", "--no-such-option", "x"], "--no-such-option"),
    "an unknown command": (["nosuch"], "nosuch"),
    "an unknown option of the program": (["--nosuch"], "--nosuch"),
    "a value of the wrong type": (["train-classifier", "--epochs", "x"], "--epochs"),
    "a required option left out": (["sample"], "--inverter"),
    "a required argument left out": (["run"], "recipe"),
    "a flag given a value": (["sample", "--inverter", "x", "--misclassified=yes"], "--misclassified"),
}


# Every case through CliRunner; two through the installed command too (each run starts TensorFlow).
USAGE_CASES = [(case, "CliRunner") for case in USAGE_ERRORS] + \
    [(case, "the installed command") for case in ("an extra argument", "an option the command lacks")]


@pytest.mark.parametrize("case, through", USAGE_CASES)
def test_a_usage_error_is_one_line(tmp_path, case, through):
    import subprocess
    import sys

    argv, fragment = USAGE_ERRORS[case]
    if through == "CliRunner":
        assert_one_line_error(invoke(*argv), fragment)
        return
    command = Path(sys.executable).parent / "invkeras"
    done = subprocess.run([str(command), *argv], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert fragment in lines[0] and "Traceback" not in done.stderr and not done.stdout.strip()
    assert list(tmp_path.iterdir()) == []


def test_help_and_version_still_work():
    assert invoke("--version").exit_code == 0
    for argv in (["--help"], ["kinds", "--help"], ["train-inverter", "--kind", "gan", "--help"]):
        result = invoke(*argv)
        assert result.exit_code == 0 and "Usage" in result.output, result.output


# (b) A file output where a folder stands: the message names the user's path, not a temporary file,
# and the commands refuse it before they start work.
FOLDER_OUTPUTS = ["estimate-mi --out", "train-classifier --out", "an artefact written over a folder"]


@pytest.mark.parametrize("case", FOLDER_OUTPUTS)
def test_an_output_path_that_is_a_folder_is_named_as_given(tmp_path, case):
    from invkeras import artifacts

    folder = tmp_path / ("model.keras" if case == "train-classifier --out" else "mi.json")
    folder.mkdir()
    (folder / "keep.txt").write_text("kept")
    inverter = tmp_path / "inverter"
    inverter.mkdir()
    if case == "an artefact written over a folder":  # any writer: where a race beats the early check
        with pytest.raises(IsADirectoryError) as raised:
            artifacts.write_json_atomic(folder, {"a": 1})
        line = f"cannot use {raised.value.filename}: {raised.value.strerror}"  # as the CLI words an OSError
        assert raised.value.filename == str(folder), line
    else:
        argv = (["estimate-mi", "--inverter", inverter, "--out", folder] if case == "estimate-mi --out" else
                ["train-classifier", "--epochs", 1, "--out", folder, "--workspace", tmp_path / "ws"])
        result = invoke(*argv)
        assert_one_line_error(result, str(folder), "is a folder")  # before any training or evaluation
        line = result.output
    assert ".tmp" not in line and f"{folder.parent}/." not in line
    assert (folder / "keep.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inverter", folder.name]  # no temporary file left


# (c) An inverter whose metadata names a kind that is not installed: the file is named, not --kind.
@pytest.mark.parametrize("kind", ["evil", "pixelcnn2", "../mse"])
@pytest.mark.parametrize("command", ["sample", "estimate-mi", "compare", "edit"])
def test_an_unknown_kind_in_an_inverters_metadata_names_the_file(tmp_path, command, kind):
    from invkeras import artifacts

    source = _mse(tmp_path / "inverter", features=str(_features_npz(tmp_path / "f.npz", 1)))
    meta_path = artifacts.metadata_path(source / "inverter.keras")
    meta = json.loads(meta_path.read_text())
    meta["inverter_kind"] = kind
    meta_path.write_text(json.dumps(meta))
    argv = {"sample": ["sample", "--inverter", source], "estimate-mi": ["estimate-mi", "--inverter", source],
            "compare": ["compare", "--inverter", source, "--inverter", source],
            "edit": ["edit", "--inverter", source, "--scale", 2]}[command]
    before = files_under(tmp_path)

    result = invoke(*argv)

    assert_one_line_error(result, str(meta_path), repr(kind), "not installed")
    assert "--kind" not in result.output
    assert files_under(tmp_path) == before


# (d) More held-out images asked for than exist: the output says how many were used.
@pytest.mark.parametrize("command", ["sample", "sample-grid", "compare"])
def test_asking_for_more_held_out_images_than_exist_says_so(tmp_path, command):
    features = str(_features_npz(tmp_path / "f.npz", 1))
    first, second = _mse(tmp_path / "a", features=features), _mse(tmp_path / "b", features=features, learning_rate=0.01)
    many = ["--split", "validation"]
    argv = {"sample": ["sample", "--inverter", first, "--num-inputs", 10**6, "--num-samples", 1, *many],
            "sample-grid": ["sample-grid", "--inverter", first, "--reconstructor", second, "--num-inputs", 10**6,
                            "--num-samples", 1, *many],
            "compare": ["compare", "--inverter", first, "--inverter", second, "--num-images", 10**6,
                        "--num-samples", 2, "--grid-inputs", 0, *many]}[command]

    result = invoke(*argv)

    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert notes == ["note: 6 held-out validation images exist (asked for 1,000,000); using all of them"], \
        result.output
