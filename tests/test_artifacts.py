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
