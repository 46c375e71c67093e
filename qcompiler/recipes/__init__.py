"""Built-in quantization recipes (TOML), loaded by qcompiler.quant.recipe."""
