"""The GAN's losses and its generator EMA, in keras.ops (any backend)."""

from __future__ import annotations

from keras import ops


def discriminator_hinge_loss(real_scores, fake_scores):
    """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))) (Lim & Ye 2017; BigGAN)."""
    return ops.mean(ops.relu(1.0 - real_scores)) + ops.mean(ops.relu(1.0 + fake_scores))


def generator_hinge_loss(fake_scores):
    """-mean(D(fake))."""
    return -ops.mean(fake_scores)


def feature_matching_loss(real_features, fake_features):
    """Squared distance between the batch means of D's pooled features phi (Salimans et al.
    2016): an opt-in extension, not part of Teterwak et al. (2021)."""
    difference = ops.mean(real_features, axis=0) - ops.mean(fake_features, axis=0)
    return ops.mean(difference * difference)


def ema_decay_at(step, decay: float):
    """The decay used after `step` generator updates: min(decay, (1 + step) / (10 + step)), so
    the average follows the generator closely early on (as tf.train.ExponentialMovingAverage
    with num_updates) instead of staying at its random initialisation."""
    step = ops.cast(step, "float32")
    return ops.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(average_variables, variables, decay) -> None:
    """average <- decay * average + (1 - decay) * value, for every pair."""
    for average, value in zip(average_variables, variables):
        average.assign(decay * average + (1.0 - decay) * ops.cast(value, average.dtype))
