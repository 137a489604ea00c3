"""Compiled autoregressive sampling from a (conditional) PixelCNN++.

The whole pixel loop runs inside one compiled function (`compile_function`: tf.function
with XLA, or jax.jit): a `fori_loop` over pixels in raster order that at each step computes
the current pixel's params and draws its channels (the mixture draws them in order, so RGB
is channel-autoregressive). Inputs and samples are batched together, and the weights are
arguments of the compiled function, so one compilation serves every call with the same
batch shape, on both backends.

Three ways to get a pixel's params:

* "pixel" (default): activations are computed once per image, or a few times, following
  Ramachandran et al. (2017). The u stream (rows above only) is computed one row per
  resolution per image row (`start_row`); the ul stream one position per resolution per pixel
  (`pixel_params`), the low resolutions only on the rows where their positions become final
  (every 2nd row, every 4th), the other rows reading them from the upsampling layers' caches.
  About 1.3 forward passes per image (`macs_per_image`).
* "cached": only the current row is computed at each of the three resolutions, reading rows
  above from per-layer caches; the ul stream's row is recomputed at every pixel
  (`row_params`), about W / 2 forward passes per image.
* "full": one full forward pass per pixel; the simple reference.

Randomness is stateless: the same `seed`, `batch_size` and `jit` give identical samples
(XLA draws different random bits from TensorFlow's own kernels), however many batches are
drawn at once.

On a CPU, `sample` draws its batches on one thread per core. A pixel step is a chain of
small operations, most of which run on one core, so two batches side by side use two cores
where one batch leaves the second mostly idle.
"""

from __future__ import annotations

import math
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Literal

import keras
import numpy as np
from keras import ops

from invkeras.inverters.pixelcnn import likelihoods
from invkeras.distribution import compile_function
from invkeras.errors import InvkerasError
from invkeras.workers import available_cores
from invkeras.inverters.pixelcnn.network import NUM_RESOLUTIONS, PixelCNNConfig, check_inputs, model_inputs

METHODS = ("pixel", "cached", "full")
DEFAULT_METHOD = "pixel"

# Compiled functions per model, keyed by what fixes their shapes; dropped with the model.
_COMPILED: "weakref.WeakKeyDictionary[keras.Model, dict]" = weakref.WeakKeyDictionary()
# The compiled functions of each model that have run (compiled) at least once.
_DRAWN: "weakref.WeakKeyDictionary[keras.Model, set]" = weakref.WeakKeyDictionary()


def _pixel_loop(model, config: PixelCNNConfig, batch: int, h, seed, method: str, choose: Callable, record: bool):
    """Visit pixels in raster order; `choose(params_here, seed, pixel)` gives the pixel's
    values [B, 1, 1, C]. Returns the image and, if `record`, every pixel's params as the
    loop saw them. Runs inside a compiled function."""
    height, width, channels = config.image_shape
    param_shape = config.params_shape[2:]  # per pixel: (C, 256) or (P,)
    # The image carries two zero rows on top so a row step can always read rows r-2..r.
    image = ops.zeros((batch, height + 2, width, channels), dtype="float32")
    recorded = ops.zeros((batch, height * width, *param_shape)) if record else ops.zeros(())

    def window(image, row):
        return ops.slice(image, (0, row, 0, 0), (batch, 3, width, channels))

    def take_pixel(row, col, params_here, image, state, seed, recorded):
        """Draw (or copy) pixel (row, col) from its params [B, 1, ...] and write it."""
        pixel = row * width + col
        seed, step_seed = likelihoods.split_seed(seed, n=2)
        values = choose(ops.expand_dims(params_here, 1), step_seed, pixel)  # [B, 1, 1, C]
        image = ops.slice_update(image, (0, row + 2, col, 0), ops.cast(values, "float32"))
        if record:
            recorded = ops.slice_update(recorded, (0, pixel) + (0,) * len(param_shape), params_here)
        return image, state, seed, recorded

    if method == "full":

        def pixel_step(pixel, carry):
            image, state, seed, recorded = carry
            params = model(model_inputs(config, image[:, 2:], h), training=False)
            flat = ops.reshape(params, (batch, height * width, *param_shape))
            params_here = ops.take(flat, ops.expand_dims(pixel, 0), axis=1)  # [B, 1, ...]
            return take_pixel(pixel // width, pixel % width, params_here, image, state, seed, recorded)

        carry = ops.fori_loop(0, height * width, pixel_step, (image, {}, seed, recorded))
    elif method == "pixel":
        h_levels = model.conditioning_maps(h, training=False)

        def row_step(row, carry):
            image, (u_state, pixel_state), seed, recorded = carry
            u_rows, u_state = model.start_row(u_state, window(image, row), row, h_levels)

            def pixels(max_level):
                def run():
                    def pixel_step(col, carry):
                        image, pixel_state, seed, recorded = carry
                        params_here, pixel_state = model.pixel_params(pixel_state, window(image, row), row, col,
                                                                      h_levels, u_rows, max_level)
                        return take_pixel(row, col, params_here, image, pixel_state, seed, recorded)

                    return ops.fori_loop(0, width, pixel_step, (image, pixel_state, seed, recorded))

                return run

            def levels_from(level):  # the row's loop: levels up to the highest l with row % 2**l == 0
                if level == 0:
                    return pixels(0)
                return lambda: ops.cond(ops.equal(row % 2**level, 0), pixels(level), levels_from(level - 1))

            image, pixel_state, seed, recorded = levels_from(NUM_RESOLUTIONS - 1)()
            return image, (u_state, pixel_state), seed, recorded

        state = (model.initial_row_state(batch, ul=False), model.initial_pixel_state(batch))
        carry = ops.fori_loop(0, height, row_step, (image, state, seed, recorded))
    else:
        h_levels = model.conditioning_maps(h, training=False)

        def row_step(row, carry):
            image, state, seed, recorded = carry
            # The u stream sees rows above only: once per row.
            u_rows, state = model.start_row(state, window(image, row), row, h_levels)

            def pixel_step(col, carry):
                image, state, seed, recorded = carry
                params_row, state = model.row_params(state, window(image, row), row, h_levels, u_rows)
                params_here = ops.take(params_row, ops.expand_dims(col, 0), axis=2)[:, 0]  # [B, 1, ...]
                return take_pixel(row, col, params_here, image, state, seed, recorded)

            return ops.fori_loop(0, width, pixel_step, (image, state, seed, recorded))

        carry = ops.fori_loop(0, height, row_step, (image, model.initial_row_state(batch), seed, recorded))
    image, _, _, recorded = carry
    return image[:, 2:], recorded


def macs_per_image(config: PixelCNNConfig, method: str | None = None) -> float:
    """Multiply-accumulates of the network's convolutions, 1x1 layers and h projections per
    image: of one forward pass (method None), or of sampling one image with `method`. Counted
    from the layer shapes and how many positions each method evaluates (elementwise ops, and
    the work on h alone, done once per image, are left out). A transposed convolution costs its
    kernel size per input position when applied to a row or a whole map; the per-pixel pass
    applies it to one cell for one output position, so 4 taps for 1 (see `network.py`)."""
    if method is not None:
        _check_method(method)
    f, channels = config.filters, config.num_channels
    sizes = config.resolutions
    height0, width0 = sizes[0]
    area = [h * w for h, w in sizes]
    # h maps are projected at every position; a global h's projection is once per image.
    h_dim = 0 if not config.spatial_h_maps else f if config.conditioning == "vector" else config.h_shape[-1]
    params = likelihoods.num_params(config.likelihood, channels, config.num_mixtures)

    def gated(taps, aux):  # per position
        return taps * 2 * f * f + 2 * aux * f + taps * 2 * f * 2 * f + h_dim * 2 * f

    levels = range(len(sizes))
    depth = {res: config.nr_resnet if res == len(sizes) - 1 else config.nr_resnet + 1 for res in levels}
    # Per-position cost of each stream at each level (gated layers), and of the level changes.
    u_level = [config.nr_resnet * gated(6, 0) + depth[res] * gated(6, f) for res in levels]
    ul_level = [config.nr_resnet * gated(4, f) + depth[res] * gated(4, 2 * f) for res in levels]
    u_init, ul_init = 6 * (channels + 1) * f, 5 * (channels + 1) * f
    down_u, down_ul, up_u, up_ul = 6 * f * f, 4 * f * f, 6 * f * f, 4 * f * f  # per output / input position
    out = f * params
    # Positions each layer evaluates per image, per level: whole maps, one row per image row
    # (u in both fast methods), or one position per pixel ("pixel") / one row per pixel ("cached").
    u_rows = [height0 * w for _, w in sizes]
    if method in (None, "full"):
        u_pos, ul_pos, out_pos = area, area, area[0]
    elif method == "pixel":  # level l on every pixel of every (2**l)-th row
        u_pos, ul_pos, out_pos = u_rows, [math.ceil(height0 / 2**level) * width0 for level in levels], area[0]
    else:  # cached
        u_pos, ul_pos, out_pos = u_rows, [area[0] * w for _, w in sizes], area[0] * width0
    total = u_pos[0] * u_init + ul_pos[0] * ul_init + out_pos * out
    for res in levels:
        total += u_pos[res] * u_level[res] + ul_pos[res] * ul_level[res]
        if res > 0:  # stride-2 convolutions into res, transposed ones out of it
            total += u_pos[res] * (down_u + up_u) + ul_pos[res] * down_ul
            total += ul_pos[res - 1] * up_ul if method == "pixel" else ul_pos[res] * up_ul
    return float(total * (area[0] if method == "full" else 1))


def _compiled(model, config: PixelCNNConfig, batch_size: int, method: str, jit: bool, kind: str,
              temperature: float = 1.0):
    """One compiled function per (model, config, batch size, method, jit, kind, temperature)."""
    per_model = _COMPILED.setdefault(model, {})
    key = (config.model_dump_json(), batch_size, method, jit, kind, temperature)
    if key in per_model:
        return per_model[key]
    model_ref = weakref.ref(model)  # the cache must not keep the model alive

    def with_weights(fn):
        def run(trainable, non_trainable, *args):
            model = model_ref()
            mapping = list(zip(model.trainable_variables, trainable)) + list(
                zip(model.non_trainable_variables, non_trainable)
            )
            with keras.StatelessScope(state_mapping=mapping):
                return fn(model, *args)

        return run

    if kind == "sample":

        def fn(model, h, seed):
            def draw(params_here, step_seed, pixel):
                return likelihoods.sample_from_params(params_here, step_seed, config.likelihood, config.num_channels,
                                                      temperature)

            image, _ = _pixel_loop(model, config, batch_size, h, seed, method, draw, record=False)
            return ops.cast(image, "uint8")

    else:  # "teacher_forced": write the given image's pixels instead of sampled ones

        def fn(model, h, x):
            width, channels = config.image_shape[1:]

            def given(params_here, step_seed, pixel):
                row, col = pixel // width, pixel % width
                return ops.slice(x, (0, row, col, 0), (batch_size, 1, 1, channels))

            _, recorded = _pixel_loop(model, config, batch_size, h, likelihoods.make_seed(0), method, given, record=True)
            return recorded

    per_model[key] = compile_function(with_weights(fn), jit=jit)
    return per_model[key]


def traceable_sampler(model, config: PixelCNNConfig, batch_size: int, method: str = DEFAULT_METHOD) -> Callable:
    """`fn(h, seed) -> uint8 images [batch_size, H, W, C]` on the model's own variables, for
    tracing into a graph (SavedModel export). `seed` is an int32 scalar; the draws equal those
    of `sample(..., num_samples=1, seed=seed, batch_size=batch_size)` on the same h."""
    _check_method(method)

    def fn(h, seed):
        stateless = ops.stack([ops.zeros((), "int32"), ops.cast(seed, "int32")])
        first_batch_seed = likelihoods.split_seed(stateless, n=2)[0]

        def draw(params_here, step_seed, pixel):
            return likelihoods.sample_from_params(params_here, step_seed, config.likelihood, config.num_channels)

        image, _ = _pixel_loop(model, config, batch_size, h, first_batch_seed, method, draw, record=False)
        return ops.cast(image, "uint8")

    return fn


def _check_h(config: PixelCNNConfig, h) -> np.ndarray | None:
    if config.conditioning == "none":
        if h is not None:
            raise InvkerasError("sample: this PixelCNN is unconditional; pass h=None")
        return None
    if h is None:
        raise InvkerasError(f"sample: this PixelCNN is conditioned ('{config.conditioning}'); pass h")
    h = np.asarray(h, dtype="float32")
    if h.ndim != 1 + len(config.h_shape) or h.shape[1:] != tuple(config.h_shape):
        raise InvkerasError(f"sample: h has shape {h.shape}; expected (N, {', '.join(map(str, config.h_shape))})")
    return h


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InvkerasError(f"sample: unknown method '{method}'; choose one of {', '.join(METHODS)}")


def _resolve_config(model, config: PixelCNNConfig | None) -> PixelCNNConfig:
    own = getattr(model, "pixelcnn_config", None)
    if config is None:
        if own is None:
            raise InvkerasError("sample: pass the PixelCNNConfig of this model")
        return own
    if own is not None and own != config:
        raise InvkerasError("sample: the config passed does not match the model's own pixelcnn_config")
    return config


def _weights(model):
    return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]


def sample(
    model: keras.Model,
    config: PixelCNNConfig | None = None,
    h=None,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    method: Literal["pixel", "cached", "full"] = DEFAULT_METHOD,
    jit: bool = True,
    threads: int | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """Draw `num_samples` images per conditioning input: uint8 [N, K, H, W, C].

    config defaults to `model.pixelcnn_config`. h: [N, *h_shape], or None for an
    unconditional model (then N = 1). All N*K samples are drawn in batches of `batch_size`;
    the last batch is padded so every batch reuses one compiled function. `threads` batches
    are drawn at a time (None: `default_threads()`). Identical `seed`, `batch_size` and `jit`
    give identical samples, whatever `threads` is. `temperature` below 1 draws from the
    sharpened mixture of `likelihoods.sample_from_params` (1: the model itself).
    """
    if num_samples < 1 or batch_size < 1 or (threads is not None and threads < 1):
        raise InvkerasError("sample: num_samples, batch_size and threads must be >= 1")
    if not (math.isfinite(temperature) and temperature > 0):
        raise InvkerasError(f"sample: temperature must be a positive number, got {temperature}")
    _check_method(method)
    config = _resolve_config(model, config)
    h = _check_h(config, h)
    num_inputs = 1 if h is None else h.shape[0]
    total = num_inputs * num_samples
    batch_size = min(batch_size, total)
    sampler = _compiled(model, config, batch_size, method, jit, "sample", float(temperature))
    trainable, non_trainable = _weights(model)

    # Sample s of input n sits at row n * K + s.
    h_rows = None if h is None else np.repeat(h, num_samples, axis=0)
    num_batches = math.ceil(total / batch_size)
    batch_seeds = likelihoods.split_seed(likelihoods.make_seed(seed), n=max(2, num_batches))

    def draw(index):
        begin = index * batch_size
        count = min(batch_size, total - begin)
        h_batch = None
        if h_rows is not None:
            h_batch = h_rows[begin : begin + count]
            if count < batch_size:  # pad with copies of the last row; those samples are dropped
                h_batch = np.concatenate([h_batch, np.repeat(h_batch[-1:], batch_size - count, axis=0)])
        images = sampler(trainable, non_trainable, h_batch, batch_seeds[index])
        return np.asarray(ops.convert_to_numpy(images))[:count]

    threads = min(default_threads() if threads is None else threads, num_batches)
    # The first call compiles: alone, so that no two threads compile the same function.
    outputs = [] if sampler in _DRAWN.get(model, ()) else [draw(0)]
    _DRAWN.setdefault(model, set()).add(sampler)
    with ThreadPoolExecutor(threads) as pool:
        outputs += pool.map(draw, range(len(outputs), num_batches))
    return np.concatenate(outputs, axis=0).reshape(num_inputs, num_samples, *config.image_shape)


def default_threads() -> int:
    """How many batches `sample` draws at a time: one per core this process may use on a CPU,
    one on an accelerator (whose own parallelism a batch already fills)."""
    if any(not device.lower().startswith("cpu") for device in keras.distribution.list_devices()):
        return 1
    return available_cores()


def teacher_forced_params(model: keras.Model, config: PixelCNNConfig | None, x, h=None, method: str = "cached",
                          jit: bool = True):
    """Run the sampling loop but write `x`'s own pixels instead of samples, and return the
    params each step computed for its pixel, [B, *params_shape]. By causality this equals
    the full forward pass on `x`; the tests use it to check the cached row steps."""
    _check_method(method)
    config = _resolve_config(model, config)
    x = np.asarray(x, dtype="float32")
    check_inputs(config, model_inputs(config, x, None if h is None else np.asarray(h, dtype="float32")))
    fn = _compiled(model, config, x.shape[0], method, jit, "teacher_forced")
    params = fn(*_weights(model), None if h is None else np.asarray(h, dtype="float32"), x)
    return ops.reshape(params, (x.shape[0], *config.params_shape))
