"""report --html on MiniLM and DINOv2 compiles, rendered by headless Chromium.

MiniLM is compiled with repq-w8a8 from 16 sentences and measured on 8; DINOv2 with repq-w8a8
restricted to its last MLP (fc1 and fc2) from two random images, measured on its backbone
features. Chromium (Debian's ``chromium``, installed by the
README's test command) loads each page from a file, with no network: the DOM it renders must
hold the tables and plots with the report's numbers, and its screenshot must not be blank.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qcompiler.cli import main
from qcompiler.examples import example_path
from qcompiler.report.sidecar import sidecar_path
from tests.test_eval_report import compile_minilm, run_json

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH: the README's test command installs it (apt-get install chromium)",
)
FEATURES = "/backbone/layernorm/Add_1_output_0"
LAST_MLP_ONLY = """
[[overrides]]
regex = '^(?!.*/layer\\.11/mlp/)'
action = "skip"
"""
"""Skips every layer but the last block's fc1 and fc2, so that measuring takes seconds."""


# ---------------------------------------------------------------- a DOM to query


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    text: str = ""

    def iter(self) -> list[Element]:
        return [self, *(e for child in self.children for e in child.iter())]

    def all(self, tag: str, cls: str | None = None) -> list[Element]:
        return [
            e
            for e in self.iter()
            if e.tag == tag and (cls is None or cls in e.attrs.get("class", "").split())
        ]

    def by_id(self, key: str) -> Element:
        (element,) = [e for e in self.iter() if e.attrs.get("id") == key]
        return element

    def content(self) -> str:
        return self.text + "".join(child.content() for child in self.children)

    def table(self) -> list[list[str]]:
        """The cells of the first table below this element, header row first."""
        rows = self.all("table")[0].all("tr")
        return [[c.content() for c in row.children if c.tag in ("td", "th")] for row in rows]


class _TreeBuilder(HTMLParser):
    VOID = frozenset({"br", "meta", "link", "img", "hr", "input", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        while len(self.stack) > 1 and self.stack.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(Element("#text", {}, text=data))


def parse(text: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(text)
    return builder.root


# ---------------------------------------------------------------- Chromium


def chromium(page: Path, *args: str, profile: Path) -> str:
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", f"--user-data-dir={profile}", *args,
               page.resolve().as_uri()]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def png_summary(path: Path) -> tuple[int, int, float]:
    """Width, height and the fraction of non-zero bytes in the filtered scanlines (a blank page
    filters to zeros: measured 0.0001 for a white 1280×1600 screenshot)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        position += 12 + length
    width, height = struct.unpack(">II", header[:8])
    pixels = np.frombuffer(zlib.decompress(idat), np.uint8)
    return width, height, float(np.count_nonzero(pixels)) / pixels.size


# ---------------------------------------------------------------- the pages


@dataclass(frozen=True)
class Page:
    path: Path
    report: dict[str, Any]
    """report --json, printed by the same run that wrote the page."""


@pytest.fixture(scope="module")
def minilm_compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_minilm(example_path("minilm"), "repq-w8a8", 16, tmp_path_factory.mktemp("m"))


@pytest.fixture(scope="module")
def minilm_page(minilm_compiled: Path) -> Page:
    path = minilm_compiled.with_name("minilm.html")
    report = run_json(["report", str(minilm_compiled), "--float", str(example_path("minilm")),
                       "--example-text", "8", "--html", str(path)])  # fmt: skip
    return Page(path, report)


@pytest.fixture(scope="module")
def dinov2_page(dinov2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Page:
    folder = tmp_path_factory.mktemp("dinov2")
    recipe = folder / "repq-last-mlp.toml"
    text = resources.files("qcompiler.recipes").joinpath("repq-w8a8.toml").read_text()
    recipe.write_text(text + LAST_MLP_ONLY)
    images = folder / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(images, input_image=rng.standard_normal((2, 3, 224, 224)).astype(np.float32))
    compiled, path = folder / "q.onnx", folder / "dinov2.html"
    assert (
        main(
            [
                "compile",
                str(dinov2_path),
                "-o",
                str(compiled),
                "--recipe",
                str(recipe),
                "--calib",
                str(images),
                "--cache-dir",
                str(folder),
                "--expose",
                FEATURES,
            ]
        )
        == 0
    )
    report = run_json(["report", str(compiled), "--float", str(dinov2_path), "--data",
                       str(images), "--output", FEATURES, "--html", str(path)])  # fmt: skip
    return Page(path, report)


@pytest.fixture(params=["minilm", "dinov2"])
def page(request: pytest.FixtureRequest) -> Page:
    return request.getfixturevalue(f"{request.param}_page")


def sidecar_passes(page: Page) -> list[str]:
    document = json.loads(sidecar_path(Path(page.report["model"])).read_text())
    return [record["name"] for record in document["passes"]]


# ---------------------------------------------------------------- in the browser


@needs_chromium
def test_the_browser_renders_every_table_and_plot(page: Page, tmp_path: Path) -> None:
    dom = parse(chromium(page.path, "--dump-dom", profile=tmp_path / "profile"))
    layers = page.report["layers"]
    summary = {key: value for key, value in dom.by_id("summary").table()[1:]}
    assert summary["recipe"].startswith("repq-")
    assert summary["layers"].startswith(f"{len(layers)} quantized: {len(layers)} on ORT integer")
    assert [row[0] for row in dom.by_id("pass-log").table()[1:]] == sidecar_passes(page)
    table = dom.by_id("layers").table()
    assert table[0][:4] == ["layer", "activation", "calibrated range", "grid range"]
    assert [row[0] for row in table[1:]] == [layer["label"] for layer in layers]
    sites = dom.by_id("repq-sites").table()[1:]
    assert [row[0] for row in sites] == [s["activation"] for s in page.report["reparameterized"]]
    sensitivity = dom.by_id("sensitivity").table()[1:]
    assert [(row[0], row[3], row[5]) for row in sensitivity] == [
        (layer["label"], f"{layer['sensitivity']['one_minus_cosine']:.2e}", layer["remedy"] or "—")
        for layer in layers
    ]
    bars = dom.by_id("sensitivity-chart").all("g", "bar")
    assert [bar.all("text")[0].content() for bar in bars] == [layer["label"] for layer in layers]
    histograms = dom.by_id("histograms").all("figure", "histogram")
    assert len(histograms) == min(6, len(layers))
    for figure, layer in zip(histograms, layers, strict=False):
        assert layer["activation"] in figure.content()
        assert len(figure.all("rect")) > 5 and len(figure.all("line", "clip")) == 2


def test_minilm_page_shows_the_repq_sites_and_the_remedies(minilm_page: Page) -> None:
    dom = parse(minilm_page.path.read_text())
    assert len(dom.by_id("repq-sites").table()) == 1 + 18  # 12 LayerNorms, 6 GELUs
    remedies = {row[5] for row in dom.by_id("sensitivity").table()[1:]}
    assert remedies & {"smooth (SmoothQuant)", "reparameterize (RepQ)", "keep float"}


def test_dinov2_page_lists_the_skipped_layers_as_kept_float(dinov2_page: Page) -> None:
    dom = parse(dinov2_page.path.read_text())
    kept = dom.by_id("kept-float").table()[1:]
    assert len(kept) == 70 and len(dinov2_page.report["layers"]) == 2
    assert all(node.startswith("/backbone/encoder/layer.") for node, _, _ in kept)
    assert all(reason.startswith("excluded by regex") for _, _, reason in kept)
    ranges = {row[1]: (row[2], row[3]) for row in dom.by_id("layers").table()[1:]}
    # fc1 reads the LayerNorm output, folded in place (RepQ, pre-LN): one grid after the fold
    calibrated, grid = ranges["/backbone/encoder/layer.11/norm2/Add_1_output_0"]
    assert calibrated == "folded (RepQ)" and grid.startswith("[-")


@needs_chromium
def test_the_screenshot_is_a_rendered_page(minilm_page: Page, tmp_path: Path) -> None:
    screenshot = tmp_path / "minilm.png"
    chromium(minilm_page.path, f"--screenshot={screenshot}", "--window-size=1280,2000",
             profile=tmp_path / "profile")  # fmt: skip
    width, height, ink = png_summary(screenshot)
    # observed: 0.056 for the top of the MiniLM page (summary, pass log, layers)
    assert (width, height) == (1280, 2000) and ink > 0.02


# ---------------------------------------------------------------- without a browser


def test_unmeasured_page_says_how_to_measure(minilm_compiled: Path, tmp_path: Path) -> None:
    path = tmp_path / "plain.html"
    assert main(["report", str(minilm_compiled), "--html", str(path)]) == 0
    dom = parse(path.read_text())
    assert "--float MODEL" in dom.by_id("unmeasured").content()
    assert len(dom.by_id("layers").table()) == 1 + 36
    assert not dom.all("svg") and not dom.all("script")


def test_names_from_the_model_are_escaped(minilm_compiled: Path, tmp_path: Path) -> None:
    folder = tmp_path / "<b onclick=alert(1)>x&y"
    folder.mkdir()
    model = Path(shutil.copy(minilm_compiled, folder / "q.onnx"))
    shutil.copy(sidecar_path(minilm_compiled), sidecar_path(model))
    path = tmp_path / "escaped.html"
    assert main(["report", str(model), "--html", str(path)]) == 0
    text = path.read_text()
    assert "<b onclick" not in text and "&lt;b onclick=alert(1)&gt;x&amp;y" in text
