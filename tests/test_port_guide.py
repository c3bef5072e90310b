"""docs/port_your_model.md is generated from running code and linked from the README; the porting
reference (docs/porting.md) links every pitfall test."""

import re
from pathlib import Path

import pytest

from docs.build import portguide
from flax_lenet.porting import pitfalls

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_guide_matches_what_the_code_generates():
    assert portguide.OUT.read_text(encoding="utf-8") == portguide.build(), \
        f"docs/port_your_model.md is stale: run `{portguide.GENERATOR}`"


def test_reference_links_every_pitfall_to_its_test_and_the_guide_links_the_reference():
    reference = (ROOT / "docs" / "porting.md").read_text(encoding="utf-8")
    assert "(porting.md#porting-pitfalls)" in portguide.OUT.read_text(encoding="utf-8")
    tests = (ROOT / "tests" / "test_pitfalls.py").read_text()
    for p in pitfalls.PITFALLS:
        assert f"`{p.test}`" in reference, p.name
        assert re.search(rf"^def test_{p.name}\(", tests, re.M), p.name


def test_readme_links_the_guide_and_shows_the_harness_in_ten_lines():
    readme = (ROOT / "README.md").read_text()
    assert "(docs/port_your_model.md)" in readme
    section = readme.split("## Copy this suite for your own port", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "parity.check(" in code and len(code.strip().splitlines()) <= 10


def test_guide_layer_table_links_tests_that_exist_and_names_every_rule():
    table = portguide._layers_table()            # asserts each linked test and parameter id is in its file
    from flax_lenet.porting import port
    for name in port.RULES:
        assert name in table or name in ("MultiheadAttention", "LSTM", "GRU"), name


def test_guide_cli_block_uses_only_options_the_cli_has():
    block = portguide._cli_block()               # asserts each option against `flax-lenet COMMAND --help`
    assert "--name-map" in block and "flax-lenet convert" in block
