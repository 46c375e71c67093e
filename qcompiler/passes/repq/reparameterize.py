"""Reparameterize per-channel activation quantizers into per-tensor ones (RepQ).

Matches: the plan's channel sites with the ``reparameterize`` lowering (plan-channelwise) whose
per-channel parameters calibration produced. For each, with the fold of
:mod:`qcompiler.quant.reparam` (s̃, rounded z̃, r1 = s/s̃, r2 = z − z̃; notes/algorithms.md §1):

- every quantized linear reader of y gets W̃ = diag(r1)·W and its bias b − (s⊙r2)·W with the
  original W (a Gemm's C absorbs it scaled by alpha/beta; a layer without a bias gets an Add);
- the per-channel affine ỹ = (y + s⊙r2)/r1 is absorbed by the producer when it is a
  LayerNormalization over the last axis with its own γ/β: γ̃ = γ/r1, β̃ = (β + s⊙r2)/r1, no op
  added (the pre-LN case, RepQ-ViT's). If anything else reads y too (post-LN: BERT's residual
  stream, a graph output), those readers get y back through the restore y = r1⊙ỹ − s⊙r2, one
  Mul and one Add kept in float (§2), and the restored value keeps y's name;
- any other producer (GELU, a norm whose γ/β are shared) keeps y, and ỹ is computed by an
  explicit Mul(1/r1) and Add((s⊙r2)/r1) read by the quantized layers only.

The layers then read ỹ with the per-tensor (s̃, z̃) in the plan, whose codes equal the
per-channel codes of y (ties aside, §19 trap 2). Activation ranges are not re-calibrated (trap
22); weight parameters are derived later, by materialize, from W̃ (§1).
Semantics: EXACT (the float graph computes the same function up to float32 rounding).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

from qcompiler.ir.edit import add_initializer
from qcompiler.ir.graph import ONNX_DOMAINS, int_attribute
from qcompiler.passes.analyses.linear import LinearLayer, constant_shape, is_shared, match_linear
from qcompiler.passes.manager import NodeError, Pass, Semantics
from qcompiler.quant.plan import ChannelSite, LinearDecision, QuantPlan
from qcompiler.quant.reparam import ChannelFold
from qcompiler.quant.spec import PER_TENSOR

REPARAMETERIZED_SUFFIX = "_reparameterized"


class ReparameterizeChannels(Pass):
    name = "reparameterize"
    semantics = Semantics.EXACT

    def __init__(self, plan: QuantPlan) -> None:
        super().__init__()
        self.plan = plan

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        nodes = {node.name: node for node in graph}
        modified = False
        for site in self.plan.channelwise.values():
            readers = self.plan.readers(site.activation)
            params = self.plan.activation_params.get(site.activation)
            if site.lowering != "reparameterize" or site.reparameterized or params is None:
                continue
            spec = readers[0].activations
            assert spec is not None
            fold = ChannelFold.of(params, spec)
            reader_nodes = [nodes[d.node] for d in readers]
            for node in reader_nodes:
                _fold_layer(graph, node, fold)
            y_folded = self._reparameterize(graph, nodes[site.producer], reader_nodes, fold, site)
            for decision, node in zip(readers, reader_nodes, strict=True):
                node.replace_input_with(0, y_folded)
                _read_per_tensor(decision, str(y_folded.name))
            self.plan.activation_params[str(y_folded.name)] = fold.target
            site.reparameterized, site.channel = y_folded.name, params
            site.r1_range, site.r2_range = fold.r1_range(), fold.r2_range()
            self.log.count(f"folded_into_{site.folded_into}")
            self.log.count("float_ops_added", site.float_ops_added)
            modified = True
        return ir.passes.PassResult(model, modified=modified)

    def _reparameterize(
        self,
        graph: ir.Graph,
        producer: ir.Node,
        readers: list[ir.Node],
        fold: ChannelFold,
        site: ChannelSite,
    ) -> ir.Value:
        """ỹ, absorbed by the producer when it can; records how on ``site``."""
        y = producer.outputs[0]
        if _absorbs_affine(producer, len(fold.r1)):
            _fold_into_layer_norm(graph, producer, fold)
            others = [c for c in y.consumers() if all(c is not r for r in readers)]
            site.folded_into = "LayerNormalization"
            if others or y.is_graph_output():
                site.float_ops_added = _restore_for_others(graph, y, others, fold)
            return y
        site.folded_into = "explicit-affine"
        y_folded, site.float_ops_added = _explicit_affine(graph, y, fold)
        return y_folded


def _absorbs_affine(producer: ir.Node, channels: int) -> bool:
    """A LayerNormalization over the last axis whose γ (and β) are its own [C] constants."""
    if producer.op_type != "LayerNormalization" or producer.domain not in ONNX_DOMAINS:
        return False
    if int_attribute(producer, "axis", -1) != -1:
        return False
    params = [v for v in producer.inputs[1:] if v is not None]
    return all(constant_shape(v) == (channels,) and not is_shared(v, producer) for v in params)


def _fold_into_layer_norm(graph: ir.Graph, norm: ir.Node, fold: ChannelFold) -> None:
    """γ̃ = γ/r1, β̃ = (β + s⊙r2)/r1; a norm without β gets one."""
    gamma = norm.inputs[1]
    assert gamma is not None and gamma.const_value is not None
    _set_constant(gamma, gamma.const_value.numpy() / fold.r1)
    beta = norm.inputs[2] if len(norm.inputs) > 2 else None
    if beta is None:
        name = f"{norm.outputs[0].name}_ln_bias"
        beta = add_initializer(graph, name, np.zeros(len(fold.r1), dtype=_float_type(gamma)))
        norm.resize_inputs(3)
        norm.replace_input_with(2, beta)
    assert beta.const_value is not None
    _set_constant(beta, (beta.const_value.numpy() + fold.offset) / fold.r1)


def _restore_for_others(
    graph: ir.Graph, y: ir.Value, others: list[ir.Node], fold: ChannelFold
) -> int:
    """y = r1⊙ỹ − s⊙r2 for every reader of ``y`` but the folded layers; returns the ops added.

    ``y`` becomes ỹ; the restored value takes y's name (and its graph-output slot). A residual
    Add whose other operand is a MatMul's bias Add (the sublayer's output projection) gets
    the − s⊙r2 in that bias instead, and reads only r1⊙ỹ (§2's cheapest exact lowering).
    """
    name = str(y.name)
    y.name = name + REPARAMETERIZED_SUFFIX
    biases = {id(reader): _residual_bias(reader, y) for reader in others}
    shifted = y.is_graph_output() or any(bias is None for bias in biases.values())
    shift = -fold.offset if shifted else np.zeros_like(fold.offset)
    nodes = _affine(graph, y, fold.r1, shift, name)
    rescaled, restored = nodes[0].outputs[0], nodes[-1].outputs[0]
    for reader in others:
        bias = biases[id(reader)]
        if bias is not None:
            assert bias.const_value is not None
            _set_constant(bias, bias.const_value.numpy() - fold.offset)
        _redirect_readers(y, restored if bias is None else rescaled, [reader])
    _redirect_outputs(graph, y, restored)
    return len(nodes)


def _residual_bias(add: ir.Node, y: ir.Value) -> ir.Value | None:
    """The bias of the MatMul whose output ``add`` adds to ``y``, if only that Add reads it."""
    if add.op_type != "Add" or add.domain not in ONNX_DOMAINS or len(add.inputs) != 2:
        return None
    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    bias_add = other.producer() if other is not None else None
    if other is None or bias_add is None or is_shared(other, add):
        return None
    for value in bias_add.inputs:
        matmul = value.producer() if value is not None else None
        if matmul is None:
            continue
        layer = match_linear(matmul)
        if isinstance(layer, LinearLayer) and layer.bias_node == bias_add.name:
            return None if layer.bias_shared else _bias_value(matmul, layer)
    return None


def _explicit_affine(graph: ir.Graph, y: ir.Value, fold: ChannelFold) -> tuple[ir.Value, int]:
    """ỹ = y·(1/r1) + (s⊙r2)/r1 as new float ops after y's producer."""
    name = f"{y.name}{REPARAMETERIZED_SUFFIX}"
    nodes = _affine(graph, y, 1.0 / fold.r1, fold.offset / fold.r1, name)
    return nodes[-1].outputs[0], len(nodes)


def _affine(
    graph: ir.Graph, x: ir.Value, scale: np.ndarray, shift: np.ndarray, name: str
) -> list[ir.Node]:
    """``Mul(x, scale)`` then ``Add(·, shift)`` (none when shift is 0); the last output is
    ``name``. Returns the new nodes."""
    mul = ir.node(
        "Mul",
        [x, add_initializer(graph, f"{name}_affine_scale", scale.astype(_float_type(x)))],
        name=f"{name}_Mul",
    )
    new_nodes = [mul]
    if np.any(shift != 0):
        shift_value = add_initializer(graph, f"{name}_affine_shift", shift.astype(_float_type(x)))
        new_nodes.append(ir.node("Add", [mul.outputs[0], shift_value], name=f"{name}_Add"))
    new_nodes[-1].outputs[0].name = name
    for node in new_nodes:
        _same_type(node.outputs[0], x)
    producer = x.producer()
    if producer is None:
        graph.insert_before(graph[0], new_nodes)
    else:
        graph.insert_after(producer, new_nodes)
    return new_nodes


def _fold_layer(graph: ir.Graph, node: ir.Node, fold: ChannelFold) -> None:
    """W̃ = diag(r1)·W and the bias minus (s⊙r2)·W (original W) for one linear layer."""
    layer = match_linear(node)
    if not isinstance(layer, LinearLayer):
        raise NodeError(node, f"planned as a linear layer but {layer or 'it is not one'}")
    weight = node.inputs[1]
    assert weight is not None and weight.const_value is not None
    w = weight.const_value.numpy()
    shift = fold.bias_shift(w, layer.weight_axis)
    _set_constant(weight, fold.fold_weight(w, layer.weight_axis))
    if layer.op_type == "Gemm":
        shift = shift * _float_attribute(node, "alpha")
    bias = _bias_value(node, layer)
    if bias is None:
        _append_bias(graph, node, -shift)
        return
    assert bias.const_value is not None
    b = bias.const_value.numpy()
    scale = _float_attribute(node, "beta") if layer.op_type == "Gemm" else 1.0
    _set_constant(bias, b - shift / scale)


def _bias_value(node: ir.Node, layer: LinearLayer) -> ir.Value | None:
    """The constant bias the fold can change, or None when the layer has none usable."""
    if layer.bias is None:
        return None
    if layer.op_type == "Gemm":
        if _float_attribute(node, "beta") == 0.0:
            return None
        return node.inputs[2]
    add = node.outputs[0].consumers()[0]
    return add.inputs[1] if add.inputs[0] is node.outputs[0] else add.inputs[0]


def _append_bias(graph: ir.Graph, node: ir.Node, bias: np.ndarray) -> None:
    """Insert ``Add(output, bias)`` after ``node``; its readers and graph-output slot follow."""
    output = node.outputs[0]
    name = str(output.name)
    readers = list(output.consumers())
    output.name = f"{name}_unbiased"
    value = add_initializer(graph, f"{name}_repq_bias", bias.astype(_float_type(output)))
    add = ir.node("Add", [output, value], name=f"{name}_repq_bias_Add")
    add.outputs[0].name = name
    _same_type(add.outputs[0], output)
    graph.insert_after(node, [add])
    _redirect_readers(output, add.outputs[0], readers)
    _redirect_outputs(graph, output, add.outputs[0])


def _redirect_readers(old: ir.Value, new: ir.Value, readers: list[ir.Node]) -> None:
    """``readers`` read ``new`` wherever they read ``old``."""
    for reader in readers:
        for index, value in enumerate(reader.inputs):
            if value is old:
                reader.replace_input_with(index, new)


def _redirect_outputs(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """The graph returns ``new`` wherever it returned ``old``."""
    for index, output in enumerate(graph.outputs):
        if output is old:
            graph.outputs[index] = new


def _float_type(value: ir.Value) -> np.dtype[Any]:
    """The numpy dtype of ``value``'s elements (float32 when the graph does not say): the
    constants a fold inserts must match it (a float64 graph gets float64 constants)."""
    return np.dtype(value.dtype.numpy()) if value.dtype is not None else np.dtype(np.float32)


def _same_type(value: ir.Value, like: ir.Value) -> None:
    """An elementwise op's output: the type and shape of its input."""
    value.type, value.shape = like.type, like.shape


def _read_per_tensor(decision: LinearDecision, activation: str) -> None:
    assert decision.activations is not None
    decision.activation = activation
    decision.activations = dataclasses.replace(decision.activations, granularity=PER_TENSOR)


def _set_constant(value: ir.Value, array: np.ndarray) -> None:
    """Replace an initializer's tensor, keeping its dtype."""
    assert value.const_value is not None
    dtype = value.const_value.dtype
    value.const_value = ir.tensor(np.asarray(array).astype(dtype.numpy()), name=value.name)


def _float_attribute(node: ir.Node, name: str) -> float:
    attribute = node.attributes.get(name)
    return 1.0 if attribute is None else float(attribute.as_float())
