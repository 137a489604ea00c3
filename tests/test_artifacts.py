import json

import numpy as np
import pytest

from invkeras import artifacts


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "out" / "model.keras"
    with artifacts.atomic_path(target) as tmp:
        tmp.write_text("done")
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_text() == "done"

    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("killed")
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["model.keras"]  # no temp litter


def test_atomic_dir_keeps_old_contents_on_failure(tmp_path):
    target = tmp_path / "features"
    with artifacts.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(ValueError):
        with artifacts.atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("2")
            raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["features"]


def test_metadata_records_how_the_artifact_was_made(tmp_path):
    path = artifacts.save_npz_atomic(tmp_path / "x.npz", a=np.arange(3))
    assert not artifacts.is_complete(path)  # metadata is what marks completion
    artifacts.write_metadata(path, kind="test", config={"lr": 1e-3}, seed=7, data="procedural", results={"acc": 0.5})
    assert artifacts.is_complete(path)
    meta = json.loads((tmp_path / "x.npz.meta.json").read_text())
    assert meta["kind"] == "test" and meta["seed"] == 7 and meta["config"] == {"lr": 1e-3}
    assert {"python", "keras", "numpy"} <= set(meta["versions"])
    assert meta["created"]


@pytest.mark.parametrize(
    "spec, slug",
    [("procedural", "procedural"), ("idx:../shared/data/mnist", "idx-mnist"), ("npz:/a/b/my.npz", "npz-my"),
     ("affnist/generated", "affnist-generated"), ("affnist-style:idx:../x/mnist/", "affnist-style-mnist")],
)
def test_dataset_slug(spec, slug):
    assert artifacts.dataset_slug(spec) == slug


def test_workspace_layout(tmp_path):
    assert artifacts.classifier_path("procedural", "conv", tmp_path) == tmp_path / "procedural/conv/classifier/model.keras"
    assert artifacts.features_dir("mnist", "fc", "fc3", "test", tmp_path) == tmp_path / "mnist/fc/features/fc3/test"


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """Temporary files are private (0600); the finished artefact gets what a plain write would."""
    import stat

    from invkeras.artifacts import _UMASK, atomic_dir, write_text_atomic

    path = write_text_atomic(tmp_path / "report.html", "<p>hi</p>")
    with atomic_dir(tmp_path / "exported") as tmp:
        (tmp / "x").write_text("y")
    plain = tmp_path / "plain.txt"
    plain.write_text("z")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~_UMASK
    assert stat.S_IMODE((tmp_path / "exported").stat().st_mode) == 0o777 & ~_UMASK


@pytest.mark.parametrize("text, fragments", [
    ("{\"kind\": \"inverter\",", ["not valid JSON", "line 1"]),
    ("", ["not valid JSON"]),
    ("[{\"kind\": \"inverter\"}]", ["expected a JSON object, got a list"]),
    ("\"inverter\"", ["expected a JSON object, got the string 'inverter'"]),
    ("{\"kind\": \"inverter\", \"inverter_kind\": \"mse\", \"config\": [1, 2]}", ["config: expected an object, got a list"]),
    ("{\"kind\": 7}", ["kind: expected a string, got the number 7"]),
    ("{\"kind\": \"inverter\", \"inverter_kind\": \"mse\", \"image_shape\": \"28x28\"}",
     ["image_shape: expected a list, got the string '28x28'"]),
    (b"\xff\xfe\x00binary", ["not a JSON text file"]),
])
def test_inverter_metadata_that_is_not_a_json_object_of_metadata_is_one_line_naming_it(tmp_path, text, fragments):
    from typer.testing import CliRunner

    from cli_errors import assert_one_line_error  # tests/cli_errors.py
    from invkeras.cli import app

    inverter = tmp_path / "inverter"
    inverter.mkdir()
    (inverter / "inverter.keras").write_bytes(b"PK")
    meta = artifacts.metadata_path(inverter / "inverter.keras")
    meta.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = CliRunner().invoke(app, ["sample", "--inverter", str(inverter)])
    assert_one_line_error(result, f"metadata {meta}:", *fragments)


def test_metadata_keeps_every_key_it_was_written_with(tmp_path):
    path = tmp_path / "model.keras"
    artifacts.write_metadata(path, kind="inverter", config={"a": 1}, seed=3, layer="fc3", image_shape=[8, 8, 1],
                             anything={"of": ["its", "own"]})
    meta = artifacts.read_metadata(path)
    assert meta["anything"] == {"of": ["its", "own"]} and meta["image_shape"] == [8, 8, 1] and meta["seed"] == 3
    assert artifacts.read_metadata(tmp_path / "absent.keras") is None
