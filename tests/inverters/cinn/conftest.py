"""The tiny trained models the cinn tests share."""

import pytest


@pytest.fixture(scope="session")
def autoencoder(tmp_path_factory):
    """A tiny autoencoder of the procedural 20x20 images, latent 8 (about 7 s on 2 cores)."""
    from invkeras.autoencoders.training import AutoencoderConfig, train_autoencoder

    out = tmp_path_factory.mktemp("ae") / "ae"
    train_autoencoder(AutoencoderConfig(dataset="procedural", latent_dim=8, filters=8, max_steps=200,
                                        steps_per_checkpoint=100, train_examples=1024, eval_examples=64, out=str(out)),
                      progress=False)
    return out
