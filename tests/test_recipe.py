"""Recipes: built-ins, TOML/YAML/JSON files, override precedence, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnx_ir as ir
import pytest

from qcompiler.quant.recipe import RecipeError, builtin_recipes, load_recipe, recipe_from_dict
from qcompiler.quant.spec import PER_TENSOR, per_channel

BASE = {
    "name": "custom",
    "mode": "static",
    "weights": {"dtype": "int8", "symmetric": True, "granularity": "per-channel"},
    "activations": {"dtype": "uint8", "symmetric": False, "observer": "minmax"},
}


def test_builtin_w8a8_is_int8_per_channel_weights_and_uint8_per_tensor_activations() -> None:
    assert {"w8a8", "w8-dynamic"} <= set(builtin_recipes())
    recipe = load_recipe("w8a8")
    assert recipe.mode == "static"
    assert (recipe.weights.dtype, recipe.weights.symmetric) == (ir.DataType.INT8, True)
    assert recipe.weights.granularity == per_channel(1)
    assert recipe.activations is not None
    assert (recipe.activations.dtype, recipe.activations.symmetric) == (ir.DataType.UINT8, False)
    assert recipe.activations.granularity == PER_TENSOR


def test_builtin_dynamic_recipe_has_no_activation_spec() -> None:
    choice = load_recipe("w8-dynamic").choose("any", "MatMul")
    assert choice.quantize and choice.activations is None


def test_override_precedence_is_name_then_regex_then_op_type_then_default() -> None:
    recipe = recipe_from_dict(
        {
            **BASE,
            "overrides": [
                {"op_type": "MatMul", "activations": {"observer": "percentile"}},
                {"regex": "^fc2", "action": "skip"},
                {"name": "fc2_keep", "weights": {"dtype": "int4", "symmetric": True}},
            ],
        },
        "test",
    )
    assert recipe.choose("fc2_keep", "MatMul").rule == "name fc2_keep"
    assert recipe.choose("fc2_keep", "MatMul").weights.dtype == ir.DataType.INT4  # type: ignore[union-attr]
    assert recipe.choose("fc2_other", "MatMul") == recipe.choose("fc2_x", "Gemm")
    assert recipe.choose("fc2_other", "MatMul").quantize is False
    by_type = recipe.choose("qkv", "MatMul")
    assert by_type.rule == "op type MatMul"
    assert by_type.activations is not None and by_type.activations.observer == "percentile"
    assert recipe.choose("proj", "Gemm").rule == "default"
    assert recipe.choose("conv", "Conv").quantize is False


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_recipe_files_in_every_format_load_the_same(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"mine{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(BASE))
    elif suffix == ".yaml":
        import yaml

        path.write_text(yaml.safe_dump(BASE))
    else:
        path.write_text(
            'name = "custom"\nmode = "static"\n'
            '[weights]\ndtype = "int8"\nsymmetric = true\ngranularity = "per-channel"\n'
            '[activations]\ndtype = "uint8"\nsymmetric = false\nobserver = "minmax"\n'
        )
    assert load_recipe(path) == recipe_from_dict(BASE, "reference")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "sometimes"}, "mode must be 'static' or 'dynamic'"),
        ({"weights": {"dtype": "int7", "symmetric": True}}, "dtype must be one of"),
        ({"activations": {"dtype": "uint8", "symmetric": False, "obsrver": "x"}}, "obsrver"),
        ({"overrides": [{"regex": "(", "action": "skip"}]}, "bad regex"),
        ({"overrides": [{"name": "a", "op_type": "MatMul"}]}, "exactly one of"),
        ({"mode": "dynamic"}, "remove [activations]"),
        ({"weights": {"dtype": "int8", "symmetric": True, "bits": 9}}, "bits must be an integer"),
        (
            {"weights": {"dtype": "int8", "symmetric": True, "bits": 4, "reduce_range": True}},
            "bits and reduce_range",
        ),
        ({"channelwise": {"producers": []}}, "'producers' must be a non-empty list"),
        ({"channelwise": {"producers": ["Gelu"], "lowering": "x"}}, "lowering must be one of"),
        ({"channelwise": {"producers": ["Gelu"], "clip": 1}}, "[channelwise]: unknown key"),
        ({"softmax": {"quantizer": "log3"}}, "quantizer must be one of"),
        ({"softmax": {"bits": 12}}, "bits must be an integer in [2, 8]"),
        ({"softmax": {"scale": 2.0}}, "scale must be in"),
    ],
)
def test_bad_recipes_give_one_line_errors(change: dict[str, object], message: str) -> None:
    with pytest.raises(RecipeError, match=message.replace("[", r"\[")) as error:
        recipe_from_dict({**BASE, **change}, "test")
    assert "\n" not in str(error.value)


def test_unknown_recipe_name_lists_the_built_ins() -> None:
    with pytest.raises(RecipeError, match="w8a8"):
        load_recipe("w3a2")


@pytest.mark.parametrize("name", builtin_recipes())
def test_to_json_is_the_file_format(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe_from_dict(json.loads(json.dumps(recipe.to_json())), name) == recipe


def test_a_dynamic_recipe_cannot_calibrate_channels() -> None:
    dynamic = {k: v for k, v in BASE.items() if k != "activations"}
    with pytest.raises(RecipeError, match="needs calibrated"):
        recipe_from_dict(
            {**dynamic, "mode": "dynamic", "channelwise": {"producers": ["Gelu"]}}, "t"
        )


@pytest.mark.parametrize(("bits", "grid"), [(4, (-7, 7)), (6, (-31, 31))])
def test_narrow_grids_live_in_8_bit_types(bits: int, grid: tuple[int, int]) -> None:
    recipe = load_recipe(f"w{bits}a{bits}")
    assert recipe.weights.dtype == ir.DataType.INT8 and recipe.weights.bits == bits
    assert (recipe.weights.qmin, recipe.weights.qmax) == grid
    assert recipe.activations is not None and recipe.activations.bits == bits
    assert (recipe.activations.qmin, recipe.activations.qmax) == (0, 2**bits - 1)
    assert recipe.activations.saturation_range == (0, 2**bits - 1)


def test_repq_recipes_reparameterize_norm_and_gelu_outputs() -> None:
    for bits in (4, 6, 8):
        recipe = load_recipe(f"repq-w{bits}a{bits}")
        assert recipe.channelwise is not None and recipe.channelwise.reparameterizes
        assert recipe.channelwise.producers == ("LayerNormalization", "Gelu")
        plain = load_recipe(f"w{bits}a{bits}")
        assert (recipe.weights, recipe.activations) == (plain.weights, plain.activations)
