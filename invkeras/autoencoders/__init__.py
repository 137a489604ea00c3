"""Autoencoders x -> z -> x_hat: the latent space a `cinn` inverter models (Rombach et al. 2020)."""
