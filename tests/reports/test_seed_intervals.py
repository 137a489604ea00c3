"""The information curve and table with several seeds: both intervals drawn, as ever with one seed."""

from invkeras import artifacts
from invkeras.reports.builtin_sections import data_processing_notes, seed_cells
from invkeras.reports.plots import plot_nce_by_layer


def rows(seeded: bool):
    made = []
    for layer, nll in (("conv1", 100.0), ("fc3", 180.0)):
        row = {"layer": layer, "H*(x|h) nats": nll, "se nats": 2.0, "NCE nats": -nll, "NCE - NCE(ref)": 100.0 - nll,
               "se (paired)": 0.5, "reference": "conv1"}
        if seeded:
            row.update({"n_seeds": 3, "se seeds+images nats": 6.0, "se (paired, seeds+images)": 4.0,
                        "ci95 low (seeds)": nll - 20, "ci95 high (seeds)": nll + 20})
        made.append(row)
    return made


def points(path):
    return {p["layer"]: p for p in artifacts.read_metadata(path)["data"][0]["points"]}


def test_the_curve_draws_the_interval_with_the_seeds_beside_the_test_image_one(tmp_path):
    absolute = points(plot_nce_by_layer(rows(True), tmp_path / "a.png"))
    assert absolute["fc3"]["se"] == 2.0 and absolute["fc3"]["se_seeds"] == 6.0
    relative = points(plot_nce_by_layer(rows(True), tmp_path / "r.png", reference="conv1"))
    assert relative["fc3"]["se"] == 0.5 and relative["fc3"]["se_seeds"] == 4.0


def test_one_seed_draws_the_curve_as_ever(tmp_path):
    assert all("se_seeds" not in p for p in points(plot_nce_by_layer(rows(False), tmp_path / "a.png")).values())


def test_the_table_shows_the_seed_interval_and_the_data_processing_breaches():
    assert seed_cells(rows(True)[1]) == ["3", "[160.00, 200.00]"]
    assert seed_cells(rows(False)[1]) == ["1", ""]
    checked = {"chains": [["conv1", "fc3"]], "breaches": [{"shallower": "conv1", "deeper": "fc3", "excess": 2.5,
                                                          "half_width": 1.0}]}
    (note,) = data_processing_notes(checked)
    assert "fc3 above conv1 by 2.500" in note and "undertrained" in note
    assert data_processing_notes({"chains": [["conv1", "fc3"]], "breaches": []}) == []
