"""Recipes: named quantization schemes that resolve, node by node, to plan decisions.

A recipe names the ops it quantizes, the weight and activation :class:`QuantSpec`, the mode
(``static``: activation ranges from calibration; ``dynamic``: activations quantized per batch at
run time) and per-node overrides. For a node the first matching rule wins, in the order
**exact node name > regex on the node name > op type > the recipe's default**; an override can
skip a node or replace fields of its specs.

Recipes load by built-in name (``qcompiler/recipes/*.toml``: ``w8a8``, ``w8-dynamic``) or from
a TOML, YAML or JSON file with the same keys::

    name = "w8a8"
    mode = "static"                      # or "dynamic"
    op_types = ["MatMul", "Gemm"]
    [weights]                            # dtype, symmetric, granularity, observer, percentile,
    dtype = "int8"                       # reduce_range, bits (a narrower grid: 4, 6 in int8)
    symmetric = true
    granularity = "per-channel"          # per-tensor | per-channel | per-group:<size>
    [activations]
    dtype = "uint8"
    symmetric = false
    observer = "minmax"                  # minmax | percentile | entropy | mse
    [softmax]                            # optional: attention probabilities (§3), simulated
    quantizer = "log-sqrt2"              # or "log2", "uniform"; bits = 4, scale = 1.0
    [channelwise]                        # optional: RepQ (notes/algorithms.md §1–2)
    producers = ["LayerNormalization", "Gelu"]
    lowering = "reparameterize"          # or "per-channel" (a float simulation)
    [[overrides]]
    regex = "fc2"                        # or name = "..." or op_type = "..."
    action = "skip"                      # or "quantize", with [overrides.activations] fields

"per-channel" means the output-channel axis for weights, bound per layer by the planner (1 for
MatMul's ``[in,out]``, 0 for Gemm with ``transB=1``; notes/algorithms.md §19 trap 6), and the
last (hidden) axis for activations.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import onnx_ir as ir

from qcompiler.errors import QCompilerError
from qcompiler.quant.spec import (
    OBSERVERS,
    PER_TENSOR,
    TYPE_RANGES,
    Granularity,
    QuantSpec,
    per_channel,
    per_group,
)

Mode = Literal["static", "dynamic"]
WEIGHT_AXIS = 1
"""Output channels of an [in,out] weight; the planner rebinds it to each layer's layout."""
ACTIVATION_AXIS = -1
"""Channels (hidden features) of an activation: the last axis."""
SPEC_KEYS = frozenset(
    {"dtype", "symmetric", "granularity", "observer", "percentile", "reduce_range", "bits"}
)
RECIPE_KEYS = frozenset(
    {
        "name",
        "description",
        "mode",
        "op_types",
        "weights",
        "activations",
        "channelwise",
        "softmax",
        "overrides",
    }
)
SOFTMAX_KEYS = frozenset({"quantizer", "bits", "scale"})
SOFTMAX_QUANTIZERS = ("log-sqrt2", "log2", "uniform")
CHANNELWISE_KEYS = frozenset({"producers", "lowering", "observer"})
Lowering = Literal["reparameterize", "per-channel"]
LOWERINGS: tuple[Lowering, ...] = ("reparameterize", "per-channel")
OVERRIDE_KEYS = frozenset({"name", "regex", "op_type", "action", "weights", "activations"})


class RecipeError(QCompilerError):
    """A recipe that cannot be read or resolved."""


@dataclass(frozen=True)
class SiteChoice:
    """What the recipe decides for one node."""

    quantize: bool
    rule: str
    """Which rule decided: 'name X', 'regex X', 'op type X' or 'default'."""
    weights: QuantSpec | None = None
    activations: QuantSpec | None = None
    """None for dynamic recipes: activations are quantized at run time."""


@dataclass(frozen=True)
class Override:
    """A rule for the nodes it matches: skip them, or quantize them with changed specs."""

    name: str | None = None
    regex: str | None = None
    op_type: str | None = None
    action: Literal["quantize", "skip"] = "quantize"
    weights: Mapping[str, Any] | None = None
    activations: Mapping[str, Any] | None = None

    @property
    def precedence(self) -> int:
        """0 for an exact name, 1 for a regex, 2 for an op type (lower wins)."""
        return 0 if self.name is not None else 1 if self.regex is not None else 2

    @property
    def label(self) -> str:
        if self.name is not None:
            return f"name {self.name}"
        if self.regex is not None:
            return f"regex {self.regex}"
        return f"op type {self.op_type}"

    def matches(self, node_name: str, op_type: str) -> bool:
        if self.name is not None:
            return node_name == self.name
        if self.regex is not None:
            return re.search(self.regex, node_name) is not None
        return op_type == self.op_type


@dataclass(frozen=True)
class Channelwise:
    """Activations calibrated per channel: the outputs of ``producers`` that feed quantized
    linear layers. ``reparameterize`` folds the channel variation into the producer and the
    weights so the integer kernels run per tensor (RepQ, notes/algorithms.md §1–2);
    ``per-channel`` keeps per-channel Q/DQ, a float simulation in ORT (the ablation's upper
    bound). ``observer`` replaces the activation observer for these tensors."""

    producers: tuple[str, ...]
    lowering: Lowering = "reparameterize"
    observer: str | None = None

    @property
    def reparameterizes(self) -> bool:
        return self.lowering == "reparameterize"

    def to_json(self) -> dict[str, Any]:
        observer = {"observer": self.observer} if self.observer else {}
        return {"producers": list(self.producers), "lowering": self.lowering, **observer}


@dataclass(frozen=True)
class SoftmaxRule:
    """Quantize attention probabilities (the Softmax outputs read by A·V): ``quantizer`` is
    ``log-sqrt2``, ``log2`` or ``uniform`` on a ``bits``-bit grid with top level ``scale``
    (notes/algorithms.md §3). ORT has no such kernel: a float simulation, labelled so."""

    quantizer: str = "log-sqrt2"
    bits: int = 4
    scale: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    mode: Mode
    op_types: tuple[str, ...]
    weights: QuantSpec
    activations: QuantSpec | None
    overrides: tuple[Override, ...] = ()
    channelwise: Channelwise | None = None
    softmax: SoftmaxRule | None = None

    def choose(self, node_name: str, op_type: str) -> SiteChoice:
        """The decision for a node: the first matching override by precedence, else default."""
        matching = [o for o in self.overrides if o.matches(node_name, op_type)]
        if matching:
            rule = min(matching, key=lambda o: o.precedence)
            return self._apply(rule)
        if op_type not in self.op_types:
            return SiteChoice(False, f"op type {op_type} is not in the recipe")
        return SiteChoice(True, "default", self.weights, self.activations)

    def _apply(self, rule: Override) -> SiteChoice:
        if rule.action == "skip":
            return SiteChoice(False, f"excluded by {rule.label}")
        weights = _updated(self.weights, rule.weights, f"{self.name}: {rule.label}", WEIGHT_AXIS)
        activations = self.activations
        if rule.activations is not None:
            if activations is None:
                raise RecipeError(f"recipe {self.name}: {rule.label} sets activations, but the "
                                  "recipe is dynamic")  # fmt: skip
            where = f"{self.name}: {rule.label}"
            activations = _updated(activations, rule.activations, where, ACTIVATION_AXIS)
        return SiteChoice(True, rule.label, weights, activations)

    def to_json(self) -> dict[str, Any]:
        """The recipe in its file format (``recipe_from_dict`` reads it back)."""
        return {
            "name": self.name,
            "description": self.description,
            "mode": self.mode,
            "op_types": list(self.op_types),
            "weights": _spec_fields(self.weights),
            **({"activations": _spec_fields(self.activations)} if self.activations else {}),
            **({"channelwise": self.channelwise.to_json()} if self.channelwise else {}),
            **({"softmax": self.softmax.to_json()} if self.softmax else {}),
            "overrides": [
                {k: v for k, v in dataclasses.asdict(o).items() if v is not None}
                for o in self.overrides
            ],
        }


def builtin_recipes() -> list[str]:
    """Names of the recipes that ship with qcompiler."""
    folder = resources.files("qcompiler.recipes")
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_recipe(name_or_path: str | os.PathLike[str]) -> Recipe:
    """A built-in recipe by name, or a recipe file (.toml, .yaml/.yml, .json)."""
    path = Path(name_or_path)
    if path.suffix in (".toml", ".yaml", ".yml", ".json"):
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        return recipe_from_dict(_read(path), str(path))
    name = str(name_or_path)
    if name not in builtin_recipes():
        known = ", ".join(builtin_recipes())
        raise RecipeError(f"unknown recipe '{name}'; built-in recipes: {known}, or give a file")
    text = resources.files("qcompiler.recipes").joinpath(f"{name}.toml").read_text()
    return recipe_from_dict(tomllib.loads(text), name)


def _read(path: Path) -> dict[str, Any]:
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:
        raise RecipeError(f"recipe file {path} cannot be parsed: {error}") from error
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {path} must hold a table/mapping at the top level")
    return data


def recipe_from_dict(data: Mapping[str, Any], source: str) -> Recipe:
    """Validate and build a recipe; every problem is one RecipeError line naming ``source``."""
    _check_keys(data, RECIPE_KEYS, f"recipe {source}")
    mode = data.get("mode", "static")
    if mode not in ("static", "dynamic"):
        raise RecipeError(f"recipe {source}: mode must be 'static' or 'dynamic', not {mode!r}")
    if "weights" not in data:
        raise RecipeError(f"recipe {source}: a [weights] table is required")
    if mode == "static" and "activations" not in data:
        raise RecipeError(f"recipe {source}: a static recipe needs an [activations] table")
    if mode == "dynamic" and "activations" in data:
        raise RecipeError(f"recipe {source}: a dynamic recipe quantizes activations at run time; "
                          "remove [activations]")  # fmt: skip
    if mode == "dynamic" and "channelwise" in data:
        raise RecipeError(f"recipe {source}: [channelwise] needs calibrated (static) activations")
    return Recipe(
        name=str(data.get("name", Path(source).stem)),
        description=str(data.get("description", "")),
        mode=mode,
        op_types=tuple(data.get("op_types", ("MatMul", "Gemm"))),
        weights=spec_from_dict(data["weights"], f"recipe {source} [weights]", WEIGHT_AXIS),
        activations=(
            spec_from_dict(data["activations"], f"recipe {source} [activations]", ACTIVATION_AXIS)
            if mode == "static"
            else None
        ),
        overrides=tuple(_override(o, source) for o in data.get("overrides", ())),
        channelwise=_channelwise(data["channelwise"], source) if "channelwise" in data else None,
        softmax=_softmax(data["softmax"], source) if "softmax" in data else None,
    )


def _softmax(data: Mapping[str, Any], source: str) -> SoftmaxRule:
    where = f"recipe {source} [softmax]"
    _check_keys(data, SOFTMAX_KEYS, where)
    quantizer = data.get("quantizer", "log-sqrt2")
    if quantizer not in SOFTMAX_QUANTIZERS:
        raise RecipeError(f"{where}: quantizer must be one of {', '.join(SOFTMAX_QUANTIZERS)}")
    bits, scale = data.get("bits", 4), data.get("scale", 1.0)
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise RecipeError(f"{where}: bits must be an integer in [2, 8]")
    if not isinstance(scale, int | float) or not 0 < scale <= 1:
        raise RecipeError(f"{where}: scale must be in (0, 1] (softmax outputs are at most 1)")
    return SoftmaxRule(str(quantizer), bits, float(scale))


def _channelwise(data: Mapping[str, Any], source: str) -> Channelwise:
    where = f"recipe {source} [channelwise]"
    _check_keys(data, CHANNELWISE_KEYS, where)
    producers = data.get("producers")
    if not isinstance(producers, list) or not producers:
        raise RecipeError(f"{where}: 'producers' must be a non-empty list of op types")
    lowering = data.get("lowering", "reparameterize")
    if lowering not in LOWERINGS:
        raise RecipeError(f"{where}: lowering must be one of {', '.join(LOWERINGS)}")
    observer = data.get("observer")
    return Channelwise(
        producers=tuple(str(p) for p in producers),
        lowering=lowering,
        observer=None if observer is None else _observer(observer, where),
    )


def _override(data: Mapping[str, Any], source: str) -> Override:
    where = f"recipe {source} override {dict(data)}"
    _check_keys(data, OVERRIDE_KEYS, where)
    selectors = [k for k in ("name", "regex", "op_type") if k in data]
    if len(selectors) != 1:
        raise RecipeError(f"{where}: give exactly one of name, regex, op_type")
    action = data.get("action", "quantize")
    if action not in ("quantize", "skip"):
        raise RecipeError(f"{where}: action must be 'quantize' or 'skip'")
    if "regex" in data:
        try:
            re.compile(data["regex"])
        except re.error as error:
            raise RecipeError(f"{where}: bad regex: {error}") from error
    for table in ("weights", "activations"):
        if table in data:
            _check_keys(data[table], SPEC_KEYS, f"{where} [{table}]")
    return Override(
        name=data.get("name"),
        regex=data.get("regex"),
        op_type=data.get("op_type"),
        action=action,
        weights=data.get("weights"),
        activations=data.get("activations"),
    )


def spec_from_dict(data: Mapping[str, Any], where: str, channel_axis: int) -> QuantSpec:
    """A QuantSpec from a recipe table (dtype by name, granularity as a string)."""
    _check_keys(data, SPEC_KEYS, where)
    if "dtype" not in data or "symmetric" not in data:
        raise RecipeError(f"{where}: 'dtype' and 'symmetric' are required")
    return QuantSpec(
        dtype=_dtype(data["dtype"], where),
        symmetric=bool(data["symmetric"]),
        granularity=_granularity(str(data.get("granularity", "per-tensor")), where, channel_axis),
        reduce_range=bool(data.get("reduce_range", False)),
        observer=_observer(data.get("observer", "minmax"), where),
        percentile=float(data.get("percentile", 99.999)),
        grid_bits=_grid_bits(data, where),
    )


def _grid_bits(data: Mapping[str, Any], where: str) -> int | None:
    """``bits``: a grid narrower than the dtype (e.g. 6 in uint8); None when it is the dtype's."""
    bits = data.get("bits")
    dtype = _dtype(data["dtype"], where)
    if bits is None or bits == dtype.bitwidth:
        return None
    if not isinstance(bits, int) or not 2 <= bits < dtype.bitwidth:
        raise RecipeError(
            f"{where}: bits must be an integer in [2, {dtype.bitwidth}] for {dtype.name.lower()}"
        )
    if data.get("reduce_range"):
        raise RecipeError(f"{where}: bits and reduce_range cannot be combined")
    return bits


def _updated(
    spec: QuantSpec, changes: Mapping[str, Any] | None, where: str, channel_axis: int
) -> QuantSpec:
    if not changes:
        return spec
    merged = {**_spec_fields(spec), **changes}
    return spec_from_dict(merged, where, channel_axis)


def _spec_fields(spec: QuantSpec) -> dict[str, Any]:
    granularity = spec.granularity
    text: str = granularity.kind
    if granularity.kind == "per-group":
        text = f"per-group:{granularity.group_size}"
    return {
        "dtype": spec.dtype.name.lower(),
        "symmetric": spec.symmetric,
        "granularity": text,
        "observer": spec.observer,
        "percentile": spec.percentile,
        "reduce_range": spec.reduce_range,
        **({"bits": spec.grid_bits} if spec.grid_bits else {}),
    }


QUANT_DTYPES = tuple(dtype.name.lower() for dtype in TYPE_RANGES)


def _dtype(name: object, where: str) -> ir.DataType:
    if name not in QUANT_DTYPES:
        raise RecipeError(f"{where}: dtype must be one of {', '.join(QUANT_DTYPES)}, not {name!r}")
    return ir.DataType[str(name).upper()]


def _observer(name: object, where: str) -> str:
    if name not in OBSERVERS:
        raise RecipeError(f"{where}: observer must be one of {', '.join(OBSERVERS)}")
    return str(name)


def _granularity(text: str, where: str, channel_axis: int) -> Granularity:
    if text == "per-tensor":
        return PER_TENSOR
    if text == "per-channel":
        return per_channel(channel_axis)
    if text.startswith("per-group:") and text.removeprefix("per-group:").isdigit():
        return per_group(axis=0, size=int(text.removeprefix("per-group:")))
    raise RecipeError(f"{where}: granularity must be per-tensor, per-channel or per-group:<size>")


def _check_keys(data: object, allowed: frozenset[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where}: expected a table")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(unknown)}")
