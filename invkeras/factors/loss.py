"""The factor INN's pair likelihood (Esser, Rombach & Ommer 2020, eq. 5-7), in keras.ops.

z~ = T(r) is split into blocks z~ = (z~_1, ..., z~_K, z~_res). The model says: every block of a
single example is standard normal, and for a pair (a, b) that shares factor F the F-blocks of the
two are correlated with coefficient rho, all other blocks independent:

    p(z~_a, z~_b) = N(z~_a; 0, I) * prod_k p(z~_b,k | z~_a,k),
    p(z~_b,k | z~_a,k) = N(rho z~_a,k, (1 - rho^2) I)   if the pair shares block k's factor,
                       = N(0, I)                         otherwise.

Both marginals are N(0, I), so the joint is symmetric in a and b. Through the change of
variables the loss on representations is the exact negative log-likelihood of the pair

    -log p(r_a, r_b) = -log p(z~_a) - log p(z~_b | z~_a) - log|det dT/dr (r_a)| - log|det dT/dr (r_b)|

in nats per pair, with every normalising constant kept, so that it is a real NLL (the
reference implementation drops the constant log(1 - rho^2) term; the gradients are the same).
`shared_dims` marks, per pair, the dimensions whose block's factor the pair shares (1) or not (0).
"""

from __future__ import annotations

import math

from keras import ops

LOG_2PI = math.log(2 * math.pi)


def pair_nll(z_a, z_b, logdet_a, logdet_b, shared_dims, rho: float):
    """-log p(r_a, r_b) in nats, per pair: z_a, z_b [B, d]; logdets [B]; shared_dims [B, d] in {0, 1}."""
    d = z_a.shape[-1]
    nll_a = 0.5 * ops.sum(ops.square(z_a), axis=-1) + 0.5 * d * LOG_2PI - logdet_a
    variance = 1.0 - rho**2 * shared_dims  # 1 - rho^2 in a shared block, 1 elsewhere
    residual = z_b - rho * shared_dims * z_a
    nll_b = (0.5 * ops.sum(ops.square(residual) / variance, axis=-1)
             + 0.5 * ops.sum(ops.log(variance), axis=-1) + 0.5 * d * LOG_2PI - logdet_b)
    return nll_a + nll_b
