"""`invkeras mix` and `invkeras attack`: what a kind with a latent residual (cinn) shows about a
layer, by swapping representations between images and by attacking the classifier
(Rombach et al. 2020)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer
from pydantic import create_model

from invkeras import artifacts
from invkeras.analyses.attack import AttackConfig
from invkeras.analyses.mix import MixConfig
from invkeras.commands.base import OnePerLayer, config_of, fields_of, given, register_command
from invkeras.commands.tables import console, table
from invkeras.commands.workspace import InverterAnalysis, InvertersInWorkspace


class MixStep(create_model("_MixFields", __base__=InvertersInWorkspace,
                           **fields_of(MixConfig, without=("inverter", "out")))):
    """Image mixing grids D(t^-1(v_A | h_B)), one per layer, for a kind with a latent residual
    (set `kind: cinn`); mix.png and mix.npz in each inverter's directory."""

    command: Literal["mix"]


def cli_mix(
    inverter: str = typer.Option(..., help="Inverter directory or inverter.keras of a kind with a latent residual (cinn)."),
    num_inputs: Optional[int] = typer.Option(None, help="Held-out images N; the grid is N x N [default: 6]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    batch_size: Optional[int] = typer.Option(None, help="[default: 256]"),
    out: Optional[str] = typer.Option(None, help="Output directory (default: the inverter's)."),
) -> None:
    """Image A's residual under image B's representation, D(t^-1(v_A | h_B)) (Rombach et al. 2020):
    an N x N grid, rows A, columns B; the diagonal is the autoencoder's reconstruction."""
    options = given(locals())
    from invkeras.analyses.mix import MixConfig, mix_images

    result = mix_images(MixConfig(**options))
    rows = [["grid", result.grid_path], ["arrays", result.arrays_path], ["wall time", f"{result.seconds:.1f} s"]]
    if result.share_label_of_b is not None:
        rows.append(["mixes labelled as image B (as image A)",
                     f"{result.share_label_of_b:.2f} ({result.share_label_of_a:.2f})"])
    console.print(table("Mixes", ["", "value"], rows))


@register_command
class Mix(OnePerLayer, InverterAnalysis):
    name = "mix"
    step_schema = MixStep
    examples = (
        "invkeras mix --inverter runs/procedural/conv/inverters/cinn/fc3",
        "invkeras mix --inverter runs/procedural/conv/inverters/cinn/conv1 --num-inputs 8 --split validation",
    )
    cli = staticmethod(cli_mix)

    @staticmethod
    def layer_output(step, layer):
        from invkeras.analyses.mix import MIX_GRID

        return step.inverter(layer) / MIX_GRID

    @staticmethod
    def run_layer(step, layer) -> str:
        from invkeras.analyses.mix import mix_images

        mix_images(config_of(step, MixConfig, inverter=str(step.inverter(layer))))
        return f"{layer}: mixing grid"


class AttackStep(create_model("_AttackFields", __base__=InvertersInWorkspace,
                              **fields_of(AttackConfig, without=("inverter", "out")))):
    """Adversarial examples for the classifier and D(t^-1(v_x | h(x'))), one attack per layer's
    inverter, for a kind with a latent residual (set `kind: cinn`); attack.png, .npz and .json in
    <inverter dir>/attacks/<method>_eps<epsilon>/."""

    command: Literal["attack"]

    def out(self, layer: str) -> Path:
        from invkeras.analyses.attack import attack_dir

        return attack_dir(self.inverter(layer), self.method, self.epsilon)


def cli_attack(
    inverter: str = typer.Option(..., help="Inverter directory or inverter.keras of a kind with a latent residual (cinn)."),
    epsilon: float = typer.Option(..., help="L-inf radius on [0, 1] pixels (MNIST: 0.3)."),
    method: Optional[str] = typer.Option(None, help="pgd | fgsm [default: pgd]."),
    pgd_steps: Optional[int] = typer.Option(None, help="PGD steps [default: 10]."),
    pgd_step_size: Optional[float] = typer.Option(None, help="PGD step size on [0, 1] pixels [default: 2.5 * eps / steps]."),
    num_inputs: Optional[int] = typer.Option(None, help="Held-out images N (rows of the grid) [default: 8]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    seed: Optional[int] = typer.Option(None, help="PGD's random start [default: 0]."),
    batch_size: Optional[int] = typer.Option(None, help="[default: 256]"),
    out: Optional[str] = typer.Option(None, help="Output directory (default <inverter dir>/attacks/<method>_eps<e>)."),
) -> None:
    """Adversarial examples x' (FGSM or PGD) for the inverter's classifier, and D(t^-1(v_x | h(x'))): what the
    attack changed in the layer's representation, with x's own residual (Rombach et al. 2020). Rows:
    x | D(E(x)) || x' | decoded."""
    options = given(locals())
    from invkeras.analyses.attack import AttackConfig, attack_inverter

    result = attack_inverter(AttackConfig(**options))
    s = result.summary

    def share(value):
        return "" if value is None else f"{value:.0%}"

    rows = [["attack", s["label"]], ["inputs", s["n"]],
            ["attack success rate (label of x' != label of x)", share(s["attack_success_rate"])],
            ["decoded labelled with the adversarial label of x' (successful attacks only)",
             f"{share(s['share_decoded_with_adversarial_label'])} "
             f"({share(s['share_decoded_with_adversarial_label_successful'])})"],
            ["decoded keeping x's label", share(s["share_decoded_with_input_label"])],
            ["reconstructions keeping x's label", share(s["share_reconstructions_with_input_label"])],
            ["labels x / D(E(x)) / x' / decoded",
             ", ".join(f"{p['x']}/{p['reconstruction']}/{p['x_adv']}/{p['decoded']}" for p in s["per_input"])],
            ["wall time", f"{result.seconds:.1f} s"]]
    console.print(table("Attack on the representation", ["", "value"], rows))
    console.print("written: " + ", ".join(str(p) for p in result.paths))


@register_command
class Attack(OnePerLayer, InverterAnalysis):
    name = "attack"
    step_schema = AttackStep
    examples = (
        "invkeras attack --inverter runs/mnist/conv/inverters/cinn/fc3 --epsilon 0.3",
        "invkeras attack --inverter runs/mnist/conv/inverters/cinn/logits --epsilon 0.1 --method fgsm --num-inputs 16",
        "invkeras attack --inverter DIR --epsilon 0.3 --pgd-steps 40 --out attacks/fc3-pgd40",
    )
    cli = staticmethod(cli_attack)

    @staticmethod
    def layer_output(step, layer):
        from invkeras.analyses.attack import ATTACK_JSON

        return step.out(layer) / ATTACK_JSON

    @staticmethod
    def run_layer(step, layer) -> str:
        from invkeras.analyses.attack import attack_inverter

        s = attack_inverter(config_of(step, AttackConfig, inverter=str(step.inverter(layer)),
                                      out=str(step.out(layer)))).summary
        return (f"{layer}: {s['attack_success_rate']:.0%} labels changed, "
                f"{s['share_decoded_with_adversarial_label']:.0%} decoded as x'")
