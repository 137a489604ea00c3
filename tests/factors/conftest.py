"""What the factor INN tests share: a synthetic representation whose factor structure is known, the
factor INNs trained on it (true pairs and the shuffled control), and a tiny cinn pipeline on the
procedural dataset (the session's tiny classifier, a tiny autoencoder, a cinn of fc3)."""

from __future__ import annotations

import pytest

from factor_codes import write_synthetic_features  # tests/factor_codes.py

# Block sizes that fit the synthetic code: shape has a 2-d code, every other factor a 1-d one.
SYNTHETIC_DIMS = {"shape": 2, "size": 1, "row": 1, "col": 1, "intensity": 1}


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """features .npz of the procedural images with a known factor code (tests/factor_codes.py)."""
    return write_synthetic_features(tmp_path_factory.mktemp("synthetic") / "mixed.npz")


SYNTHETIC_TRAINING = dict(max_steps=300, steps_per_checkpoint=150, num_blocks=4, hidden=64, batch_size=256,
                          learning_rate=3e-3, num_pairs=50_000, noise=0.02, eval_pairs=500, dim_pairs=2000,
                          dims=SYNTHETIC_DIMS)


@pytest.fixture(scope="session")
def synthetic_models(synthetic, tmp_path_factory):
    """{"true": dir, "shuffled": dir}: factor INNs of the synthetic code, trained on true pairs and
    on the shuffled-pair control, identical otherwise (300 steps each)."""
    from invkeras.factors.config import FactorConfig
    from invkeras.factors.training import train_factors

    root = tmp_path_factory.mktemp("synthetic_models")
    dirs = {}
    for name, shuffled in (("true", False), ("shuffled", True)):
        config = FactorConfig(features=str(synthetic), shuffled=shuffled, out=str(root / name), **SYNTHETIC_TRAINING)
        dirs[name] = train_factors(config, progress=False).model_path.parent
    return dirs


@pytest.fixture(scope="session")
def procedural_cinn(tiny_classifier, tmp_path_factory):
    """A tiny cinn of fc3 over a tiny autoencoder (latent 8), in a workspace of its own that holds a copy
    of the session's tiny classifier, at the layout's place: <workspace>/procedural/conv/inverters/cinn/fc3."""
    import shutil

    from invkeras.autoencoders.training import AutoencoderConfig, train_autoencoder
    from invkeras.inverters import config_for, train_inverter

    workspace = tmp_path_factory.mktemp("procedural_cinn")
    shutil.copytree(tiny_classifier / "procedural" / "conv" / "classifier",
                    workspace / "procedural" / "conv" / "classifier")
    autoencoder = workspace / "ae"
    train_autoencoder(AutoencoderConfig(dataset="procedural", latent_dim=8, filters=8, max_steps=200,
                                        steps_per_checkpoint=100, train_examples=1024, eval_examples=64,
                                        out=str(autoencoder)), progress=False)
    config = config_for("cinn", dict(dataset="procedural", workspace=str(workspace), layer="fc3",
                                     autoencoder=str(autoencoder), num_blocks=2, hidden=16, embed_dim=8,
                                     learning_rate=3e-3, max_steps=40, steps_per_checkpoint=40, train_examples=512,
                                     eval_examples=48))
    return train_inverter(config, progress=False).model_path.parent
