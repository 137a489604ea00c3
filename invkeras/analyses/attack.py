"""What an adversarial attack changes in a representation (Rombach, Esser & Ommer 2020, Sec. 4.3).

For held-out images x, FGSM or PGD (`invkeras.classifiers.adversarial`, L-inf, epsilon on the
[0, 1] pixel scale) makes adversarial examples x' for the inverter's classifier, aimed at
the label the classifier gives x. A kind with a latent residual (`residual` and `mix`, as
kind cinn has) then decodes x's own residual under the attacked representation:

    D(t^-1(v_x | h(x')))    with v_x = t(E(x) | h(x))

so whatever differs from x's reconstruction D(t^-1(v_x | h(x))) = D(E(x)) is what the attack
changed in the layer's representation, with everything the layer is invariant to held at
x's values. The classifier labels x, the reconstruction, x' and the decoded image.

Outputs, in <inverter dir>/attacks/<method>_eps<epsilon>/ unless `out` says otherwise, each
with metadata:
  attack.png   one row per input: x | D(E(x)) || x' | D(t^-1(v_x | h(x')))
  attack.npz   x [N,H,W,C] uint8, x_adv [N,H,W,C] float32 (what the classifier saw), the
               uint8 reconstruction and decoded [N,H,W,C], h and h_adv, and labels_x,
               labels_reconstruction, labels_adv, labels_decoded [N]
  attack.json  the attack, the attack success rate (share of inputs whose label x' changes),
               the share of decoded images the classifier labels with x''s adversarial label
               (over all inputs and over the successful attacks), and the labels per input
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from invkeras import artifacts
from invkeras.errors import InvkerasError

COMMAND = "attack"
ATTACK_GRID = "attack.png"
ATTACK_ARRAYS = "attack.npz"
ATTACK_JSON = "attack.json"
ATTACKS_DIR = "attacks"
COLUMNS = ["x", "D(E(x)): reconstruction", "x': adversarial", "D(t^-1(v_x | h(x'))): decoded"]


class AttackConfig(BaseModel):
    """Settings of `invkeras attack` (and of the recipe step)."""

    model_config = ConfigDict(extra="forbid")

    inverter: str = Field(description="inverter directory or model file of a kind with a latent residual (cinn)")
    epsilon: float = Field(ge=0, le=1, description="L-inf radius on the [0, 1] pixel scale (MNIST: 0.3)")
    method: Literal["pgd", "fgsm"] = Field("pgd", description="pgd (random start, K steps) | fgsm (one step)")
    pgd_steps: int = Field(10, gt=0, description="PGD steps K")
    pgd_step_size: Optional[float] = Field(None, ge=0, description="PGD step on [0, 1] pixels; default 2.5 eps / K")
    num_inputs: int = Field(8, gt=0, description="held-out images N (rows of the grid)")
    split: str = Field("test", description="validation | test")
    seed: int = Field(0, description="PGD's random start")
    batch_size: int = Field(256, gt=0)
    out: Optional[str] = Field(None, description="output directory (default <inverter dir>/attacks/<method>_eps<e>)")

    def attack(self):
        from invkeras.classifiers.adversarial import Attack

        return Attack(self.epsilon, self.pgd_steps, self.pgd_step_size, self.method)


def attack_dir(inverter_dir: str | Path, method: str, epsilon: float) -> Path:
    """Where an attack on an inverter's classifier is written by default: one folder per attack."""
    return Path(inverter_dir) / ATTACKS_DIR / f"{method}_eps{epsilon:g}"


def has_latent_residual(inverter) -> bool:
    """Does the kind split an image into its representation and a residual v, and decode D(t^-1(v | h))?"""
    return all(callable(getattr(inverter, name, None)) for name in ("residual", "mix"))


@dataclass
class Attacked:
    x: np.ndarray
    x_adv: np.ndarray
    decoded: np.ndarray
    reconstruction: np.ndarray
    labels: dict[str, np.ndarray]
    summary: dict
    grid_path: Path
    arrays_path: Path
    json_path: Path
    seconds: float
    paths: list[Path] = field(default_factory=list)


def _share(mask: np.ndarray) -> float | None:
    return float(np.mean(mask)) if mask.size else None


def attack_inverter(config: AttackConfig, *, inverter=None) -> Attacked:
    """Attack the classifier of `config.inverter` on N held-out images and decode what changed."""
    from invkeras.analyses.common import ClassifierProbe, classifier_of
    from invkeras.classifiers.adversarial import perturb
    from invkeras.inverters import Inverter, load_inverter
    from invkeras.inverters.data import held_out_inputs
    from invkeras.reports.grids import save_grid, to_uint8

    started = time.time()
    inverter = inverter if isinstance(inverter, Inverter) else load_inverter(config.inverter)
    where = f"{COMMAND}: inverter {inverter.path.parent}"
    if not has_latent_residual(inverter):
        raise InvkerasError(f"{where} is of kind '{inverter.kind}', which has no latent residual to decode under the "
                            "attacked representation (a kind with `residual` and `mix`, e.g. cinn, has one)")
    if not inverter.conditional:
        raise InvkerasError(f"{where} is unconditional (layer 'none'): there is no representation to attack")
    attack = config.attack()
    classifier = classifier_of(inverter, COMMAND)
    probe = ClassifierProbe(classifier, inverter.layer, config.batch_size)
    inputs = held_out_inputs(inverter.config, config.split, config.num_inputs)
    x, h = inputs["x"], inputs["h"]

    labels_x = probe.labels(x[:, None])
    if labels_x is None:
        raise InvkerasError(f"{where}: the classifier {classifier} does not end in a vector of class scores, so "
                            "there is no label to attack")
    labels_x = labels_x[:, 0]
    # Untargeted, against the label the classifier gives x: success means that label changes.
    x_adv = np.concatenate([perturb(probe.model, x[i : i + config.batch_size], labels_x[i : i + config.batch_size],
                                    attack, seed=[config.seed, i])
                            for i in range(0, len(x), config.batch_size)])
    h_adv, labels_adv = probe(x_adv[:, None])
    h_adv, labels_adv = h_adv[:, 0], labels_adv[:, 0]
    decoded = to_uint8(inverter.mix(x, h_adv, h_a=h, batch_size=config.batch_size))
    reconstruction = to_uint8(inverter.mix(x, h, h_a=h, batch_size=config.batch_size))
    labels_decoded = probe.labels(decoded[:, None])[:, 0]
    labels_reconstruction = probe.labels(reconstruction[:, None])[:, 0]

    changed = labels_adv != labels_x
    linf = float(np.max(np.abs(x_adv - x.astype(np.float32)))) / 255.0 if len(x) else 0.0
    change = np.abs(decoded.astype(np.float64) - reconstruction.astype(np.float64))
    summary = {
        "n": int(len(x)),
        "attack": attack.describe(),
        "label": attack.label(),
        "attacked_labels": "the classifier's labels of x (untargeted)",
        "attack_success_rate": _share(changed),
        "share_decoded_with_adversarial_label": _share(labels_decoded == labels_adv),
        "share_decoded_with_adversarial_label_successful": _share((labels_decoded == labels_adv)[changed]),
        "share_decoded_with_input_label": _share(labels_decoded == labels_x),
        "share_reconstructions_with_input_label": _share(labels_reconstruction == labels_x),
        "max_linf_perturbation": linf,
        "mean_abs_pixel_change_decoded_vs_reconstruction": float(change.mean()) if change.size else 0.0,
        "per_input": [{"x": int(a), "reconstruction": int(r), "x_adv": int(b), "decoded": int(d)}
                      for a, r, b, d in zip(labels_x, labels_reconstruction, labels_adv, labels_decoded)],
    }
    if "y" in inputs:
        y = np.asarray(inputs["y"])
        summary.update(accuracy_x=_share(labels_x == y), accuracy_x_adv=_share(labels_adv == y))

    out_dir = Path(config.out) if config.out else attack_dir(inverter.path.parent, config.method, config.epsilon)
    rows = [[x[i], reconstruction[i], to_uint8(x_adv[i]), decoded[i]] for i in range(len(x))]
    grid_path = save_grid(out_dir / ATTACK_GRID, rows, separator_after=2)
    labels = {"labels_x": labels_x, "labels_reconstruction": labels_reconstruction, "labels_adv": labels_adv,
              "labels_decoded": labels_decoded}
    arrays_path = artifacts.save_npz_atomic(out_dir / ATTACK_ARRAYS, x=x, x_adv=x_adv.astype(np.float32),
                                            reconstruction=reconstruction, decoded=decoded,
                                            h=np.asarray(h, np.float32), h_adv=np.asarray(h_adv, np.float32),
                                            **labels)
    seconds = time.time() - started
    json_path = out_dir / ATTACK_JSON
    artifacts.write_json_atomic(json_path, {**summary, "layer": inverter.layer, "inverter": str(inverter.path),
                                            "classifier": str(classifier), "seconds": seconds, "columns": COLUMNS})
    results = {k: v for k, v in summary.items() if k != "per_input"}
    provenance = dict(config={**config.model_dump(), "inverter": str(inverter.path)}, seed=config.seed,
                      data=inverter.meta.get("data"), layer=inverter.layer, inverter_kind=inverter.kind,
                      classifier=str(classifier), results={**results, "seconds": seconds}, columns=COLUMNS)
    artifacts.write_metadata(grid_path, kind="attack-grid", **provenance)
    artifacts.write_metadata(arrays_path, kind="attack-arrays", **provenance)
    artifacts.write_metadata(json_path, kind="attack-summary", **provenance)
    return Attacked(x, x_adv, decoded, reconstruction, labels, summary, grid_path, arrays_path, json_path, seconds,
                    [grid_path, arrays_path, json_path])
