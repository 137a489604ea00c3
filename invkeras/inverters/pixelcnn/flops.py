"""Floating-point operations of one PixelCNN++ train step: a formula from the layer shapes,
and a count from TensorFlow's graph of the same step that checks it.

The formula (`train_step_flops`)
--------------------------------
One forward pass costs `forward_macs_per_image(config)` multiply-accumulates (MACs) per
image: every convolution, transposed convolution, 1x1 layer and h projection of the network
(`sampling.macs_per_image`, counted from the layer shapes and the positions each layer
visits), plus the work on h alone that the sampler leaves out because it is done once per
image (`h_macs_per_image`: the global h projections, or the deconvolutional network that
turns a vector h into maps). A train step then costs

    FLOPs = 2 FLOPs per MAC x 3 x batch x forward MACs per image

where the 3 is the forward pass plus the two halves of the backward pass, each as costly as
the forward pass: the gradient with respect to a layer's input (the output gradient
convolved with the transposed kernel) and with respect to its weights (input patches times
output gradients). Left out: elementwise work (concat_elu, the gates, dropout, the weight-norm
kernel v / ||v|| * g, the loss, Adam's update), which is O(positions x channels) against the
O(positions x channels^2 x taps) of the convolutions: about 1% of the profiler's count at
28x28 with 32 filters, 3-5% on the 8x8 toy networks (`graph_flops` reports the share). The
formula also counts the input gradient of every layer, even of those reading only the image
or h, whose inputs need none. TensorFlow's gradient of a convolution builds it anyway; only
the 1x1 projections of h skip it, so the two counts differ by 0.02% for a vector h and by
about 1% for a spatial h of 5 channels with 8 filters (more as h's channels grow).

The check (`graph_flops`)
-------------------------
`train_step_graph` traces the Keras model's own `train_step` (forward, loss, gradients and
the optimizer's update, exactly what `fit` and `train_on_batch` run) into a TensorFlow graph
with a fixed batch shape; with `jit_compile=True` XLA compiles this same graph, so the count
holds with and without XLA. `graph_flops` walks its operations and counts, for every
matmul-like op TensorFlow actually put there (Conv2D, Conv2DBackpropInput,
Conv2DBackpropFilter, MatMul, BatchMatMul), 2 FLOPs per multiply-add the op's definition
implies given its static shapes (a convolution's and both its gradients' cost is output
positions x kernel taps x in x out channels, whatever the padding). Separately it reports
TensorFlow's own profiler (`tf.compat.v1.profiler`, float_operation) on the same graph,
which also counts the elementwise ops but approximates a convolution gradient's cost from
its *padded input* size (it assumes 'same' padding), so it over-counts the matmul-like ops of
our explicitly padded convolutions by the padding's share of the map (by 8% at 28x28, 25-30%
on 8x8 maps). Both count the graph as built; at run time grappler or XLA may prune gradients
nobody reads (the image's). The graph count needs the TensorFlow backend.
"""

from __future__ import annotations

from typing import Any

from invkeras.inverters.pixelcnn.network import NUM_RESOLUTIONS, PixelCNNConfig
from invkeras.inverters.pixelcnn.sampling import macs_per_image

FLOPS_PER_MAC = 2
TRAIN_PASSES = 3  # forward, input gradients, weight gradients
# TensorFlow ops whose cost is counted as multiply-adds; everything else is "elementwise".
MATMUL_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul", "BatchMatMul", "BatchMatMulV2",
              "BatchMatMulV3")


def num_gated_layers(config: PixelCNNConfig) -> int:
    """Gated resnet layers of both streams: nr_resnet per resolution going down, then
    nr_resnet, nr_resnet + 1, nr_resnet + 1 coming back up; two streams."""
    per_stream = NUM_RESOLUTIONS * config.nr_resnet + config.nr_resnet + (NUM_RESOLUTIONS - 1) * (config.nr_resnet + 1)
    return 2 * per_stream


def h_macs_per_image(config: PixelCNNConfig) -> float:
    """MACs of the work on h alone, per image (what `macs_per_image` leaves out): a global
    vector h is projected to a bias of 2F channels by every gated layer; under "deconv" a
    dense layer makes the coarsest map and a 4x4 stride-2 transposed convolution each finer
    one (counted per input position, like the network's own transposed convolutions). A
    spatial h's projections are per position and already in `macs_per_image`."""
    f = config.filters
    if config.conditioning != "vector":
        return 0.0
    (d,) = config.h_shape
    if config.vector_conditioning == "global":
        return float(num_gated_layers(config) * d * 2 * f)
    coarse_h, coarse_w = config.resolutions[-1]
    refine = sum(h * w for h, w in config.resolutions[1:]) * 4 * 4 * f * f  # inputs: the coarser maps
    return float(d * coarse_h * coarse_w * f + refine)


def forward_macs_per_image(config: PixelCNNConfig) -> float:
    """MACs of one training forward pass per image: the network plus the work on h."""
    return macs_per_image(config) + h_macs_per_image(config)


def train_step_flops(config: PixelCNNConfig, batch_size: int) -> float:
    """FLOPs of one train step on `batch_size` images by the formula in the module docstring:
    2 FLOPs per MAC x 3 passes x batch x forward MACs per image."""
    return float(FLOPS_PER_MAC * TRAIN_PASSES * batch_size * forward_macs_per_image(config))


# --- the count from TensorFlow's graph ------------------------------------------------------


def train_step_graph(model, inputs: dict, targets):
    """The TensorFlow graph of `model.train_step` on a batch of these shapes (traced, not run:
    no weight changes). `model` must be compiled and its optimizer built (after a step, or by
    `model.optimizer.build(model.trainable_variables)`)."""
    import tensorflow as tf

    spec = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, tf.float32), (inputs, targets))
    return tf.function(model.train_step).get_concrete_function(spec).graph


def _op_macs(op) -> int:
    """Multiply-adds implied by a matmul-like op's static shapes (0 for any other op)."""
    import math

    def elements(tensor) -> int:
        return math.prod(int(n) for n in tensor.shape)

    kind = op.type
    if kind == "Conv2D":  # output positions x (kh x kw x in) per output channel
        kh, kw, cin, _ = op.inputs[1].shape
        return elements(op.outputs[0]) * kh * kw * cin
    if kind == "Conv2DBackpropInput":  # inputs: input_sizes, filter [kh, kw, in, out], out_backprop
        kh, kw, cin, _ = op.inputs[1].shape
        return elements(op.inputs[2]) * kh * kw * cin
    if kind == "Conv2DBackpropFilter":  # inputs: input, filter_sizes, out_backprop; output: the filter
        kh, kw, cin, _ = op.outputs[0].shape
        return elements(op.inputs[2]) * kh * kw * cin
    if kind == "MatMul":
        a = op.inputs[0].shape
        return elements(op.outputs[0]) * int(a[0] if op.get_attr("transpose_a") else a[1])
    if kind.startswith("BatchMatMul"):
        a = op.inputs[0].shape
        return elements(op.outputs[0]) * int(a[-2] if op.get_attr("adj_x") else a[-1])
    return 0


def _profiler_flops_by_op(graph) -> dict[str, int]:
    """TensorFlow's profiler: float ops per op type (its 'op' view is a chain of op types)."""
    import tensorflow as tf

    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    root = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
    counts, stack = {}, list(root.children)
    while stack:
        node = stack.pop()
        counts[node.name] = counts.get(node.name, 0) + int(node.float_ops)
        stack.extend(node.children)
    return counts


def graph_flops(graph) -> dict[str, Any]:
    """FLOPs of a traced TensorFlow graph: `matmul_flops` (2 per multiply-add of the
    matmul-like ops, by their definition), `matmul_flops_by_op`, and the profiler's counts,
    `profiler_flops` (all ops it knows), `profiler_matmul_flops` and
    `profiler_elementwise_share` (the share of its total that is not matmul-like).
    Every shape must be static; an op whose shape is not raises."""
    by_op: dict[str, int] = {}
    for op in graph.get_operations():
        if op.type in MATMUL_OPS:
            by_op[op.type] = by_op.get(op.type, 0) + FLOPS_PER_MAC * _op_macs(op)
    profiler = _profiler_flops_by_op(graph)
    profiler_total = sum(profiler.values())
    profiler_matmul = sum(v for k, v in profiler.items() if k in MATMUL_OPS)
    return {
        "matmul_flops": float(sum(by_op.values())),
        "matmul_flops_by_op": {k: float(v) for k, v in sorted(by_op.items())},
        "profiler_flops": float(profiler_total),
        "profiler_matmul_flops": float(profiler_matmul),
        "profiler_elementwise_share": (profiler_total - profiler_matmul) / profiler_total if profiler_total else 0.0,
    }
