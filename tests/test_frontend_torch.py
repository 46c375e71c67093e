"""The torch frontend: nn.Module / ExportedProgram / GraphModule → onnx_ir.Model.

Every export is checked against torch itself in ONNX Runtime (normwise relative error, float32),
torch module names must survive into the IR, and failures must be one clear line.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from torch import nn

from qcompiler.errors import ExportError, QCompilerError
from qcompiler.frontends.torch import from_torch
from qcompiler.ir.provenance import NAME_SCOPES_KEY, module_name
from qcompiler.passes.manager import EXACT_TOLERANCE
from qcompiler.passes.verify import normwise_error

FEATURES, HIDDEN = 16, 32


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(FEATURES, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.proj(x)))


class Tiny(nn.Module):
    """Linear + LayerNorm + GELU one module deep, so module paths are dotted (``block.proj``)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DataDependent(nn.Module):
    """Branches on a tensor value: torch.export cannot trace this."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.proj(x)
        return x


def batch(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, FEATURES), np.float32))


def run_ort(model: ir.Model, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(
        ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (name,) = (i.name for i in session.get_inputs())
    result: np.ndarray = session.run(None, {name: x.numpy()})[0]
    return result


def assert_matches_torch(model: ir.Model, module: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        expected = module(x).numpy()
    error = normwise_error(run_ort(model, x), expected)
    assert error <= EXACT_TOLERANCE
    return error


def linear_nodes(model: ir.Model) -> list[ir.Node]:
    return [node for node in model.graph if node.op_type in ("Gemm", "MatMul")]


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


@pytest.fixture(scope="module")
def tiny_model(tiny: Tiny) -> ir.Model:
    dynamic = ({0: torch.export.Dim("batch")},)
    return from_torch(
        tiny, (batch(3),), dynamic_shapes=dynamic, input_names=["x"], output_names=["y"]
    )


def test_module_export_matches_torch_for_every_batch_size(tiny: Tiny, tiny_model: ir.Model) -> None:
    assert [v.name for v in tiny_model.graph.inputs] == ["x"]
    assert [v.name for v in tiny_model.graph.outputs] == ["y"]
    shape = tiny_model.graph.inputs[0].shape
    assert shape is not None and isinstance(shape[0], ir.SymbolicDim)
    # observed 7e-8 to 1.4e-7 here and for the ExportedProgram / GraphModule paths
    for n in (1, 3, 7):
        assert_matches_torch(tiny_model, tiny, batch(n, seed=n))


def test_module_names_survive(tiny_model: ir.Model) -> None:
    (linear,) = linear_nodes(tiny_model)
    assert module_name(linear) == "block.proj"
    (norm,) = (n for n in tiny_model.graph if n.op_type == "LayerNormalization")
    assert module_name(norm) == "block.norm"
    assert {module_name(n) for n in tiny_model.graph if n.op_type == "Erf"} == {"block.act"}


def test_exported_program_input(tiny: Tiny) -> None:
    program = torch.export.export(
        tiny, (batch(3),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    model = from_torch(program)
    assert_matches_torch(model, tiny, batch(5, seed=5))
    assert [module_name(n) for n in linear_nodes(model)] == ["block.proj"]


def test_exported_program_takes_no_example_inputs(tiny: Tiny) -> None:
    program = torch.export.export(tiny, (batch(3),))
    with pytest.raises(ExportError, match="ExportedProgram already fixes"):
        from_torch(program, (batch(3),))


def test_fx_graph_module_input(tiny: Tiny) -> None:
    graph_module = torch.fx.symbolic_trace(tiny)
    model = from_torch(graph_module, (batch(4),))
    assert_matches_torch(model, tiny, batch(4, seed=4))
    assert [module_name(n) for n in linear_nodes(model)] == ["block.proj"]


def test_untraceable_module_is_one_line_export_error() -> None:
    with pytest.raises(ExportError) as caught:
        from_torch(DataDependent().eval(), (batch(2),))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("torch.export could not trace DataDependent: ")
    assert "data-dependent" in message and "control flow" in message
    assert isinstance(caught.value.__cause__, Exception)  # the full story, for --debug


def test_wrong_example_inputs_name_the_shape_problem(tiny: Tiny) -> None:
    wrong = torch.zeros(2, FEATURES + 1)
    with pytest.raises(ExportError) as caught:
        from_torch(tiny, (wrong,))
    message = str(caught.value)
    assert "\n" not in message and "could not trace Tiny" in message
    assert "example inputs" in message


def test_missing_or_bare_example_inputs_are_refused(tiny: Tiny) -> None:
    with pytest.raises(ExportError, match="needs example_inputs as a tuple"):
        from_torch(tiny)
    with pytest.raises(ExportError, match=r"e\.g\. \(x,\); got Tensor"):
        from_torch(tiny, batch(2))  # type: ignore[arg-type]


def test_non_torch_object_is_refused() -> None:
    with pytest.raises(ExportError, match="cannot export a str"):
        from_torch("model.pt")  # type: ignore[arg-type]


def test_opset_below_18_is_refused_because_module_names_would_be_lost(tiny: Tiny) -> None:
    with pytest.raises(QCompilerError, match=r"opset_version=17 is too low.*name_scopes"):
        from_torch(tiny, (batch(2),), opset_version=17)


def test_training_module_exports_in_eval_mode_and_keeps_its_flags() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(FEATURES, FEATURES), nn.Dropout(0.5)).train()
    model = from_torch(module, (batch(2),))
    assert module.training and module[1].training
    assert "Dropout" not in {n.op_type for n in model.graph}
    assert_matches_torch(model, module.eval(), batch(2))


def test_export_is_silent(tiny: Tiny, capfd: pytest.CaptureFixture[str]) -> None:
    from_torch(tiny, (batch(2),))
    failed = DataDependent().eval()
    with pytest.raises(ExportError):
        from_torch(failed, (batch(2),))
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_name_scopes_metadata_is_what_module_name_reads(tiny_model: ir.Model) -> None:
    (linear,) = linear_nodes(tiny_model)
    # the list ends with the op's FX name; the module paths come before it
    assert linear.metadata_props[NAME_SCOPES_KEY].startswith("['', 'block', 'block.proj', ")


def test_module_name_without_torch_provenance() -> None:
    def node(name: str, scopes: str | None = None) -> ir.Node:
        n = ir.node("Relu", [ir.Value(name="x")], name=name)
        if scopes is not None:
            n.metadata_props[NAME_SCOPES_KEY] = scopes
        return n

    assert module_name(node("/backbone/encoder/layer.0/mlp/fc1/MatMul")) == (
        "backbone.encoder.layer.0.mlp.fc1"
    )
    assert module_name(node("/Shape")) is None  # a TorchScript op at the top level
    assert module_name(node("Relu_3")) is None  # no provenance at all
    assert module_name(node("n", "['', 'relu']")) is None  # an op of the root module
    assert module_name(node("n", "not a list")) is None
