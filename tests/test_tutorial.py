"""The walk-through (``docs/tutorial.py``, rendered to ``tutorial.md`` and ``tutorial.ipynb``) runs
top to bottom, its assertions hold, and its two networks are the project's.

The script's cells compare torch and Flax with ``np.testing.assert_allclose`` as a reader would;
these tests run it in-process (fast) and as a notebook in a Jupyter kernel (slow), and show that a
port error in it (fc1's rows left in torch's order) fails.
"""

import json
import re
import runpy
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from flax_lenet import Net, convert
from torch_reference import Net as TorchNet

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "tutorial.py"
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
PAGE = ROOT / "docs" / "tutorial.md"
FC1_PERMUTATION = '.reshape(120, 16, 6, 6).transpose(2, 3, 1, 0).reshape(576, 120)'


@pytest.fixture(scope="module")
def tutorial():
    """The script's globals after running it top to bottom, as ``python docs/tutorial.py`` would."""
    return runpy.run_path(str(SOURCE), run_name="tutorial")


def test_the_tutorials_torch_net_is_torch_reference_net(tutorial):
    net = tutorial["Net"]()
    reference = TorchNet(3)
    reference.load_state_dict(net.state_dict())                    # strict: the same names and shapes
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)


def test_the_tutorials_flax_net_and_weight_copy_are_the_projects(tutorial):
    net = TorchNet(3)
    model = tutorial["FlaxNet"](rngs=nnx.Rngs(0))
    tutorial["load_torch_weights"](model, net)
    expected = convert.torch_to_flax(net.state_dict())
    copied = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert jax.tree.structure(copied) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, copied, expected)  # the same arrays, bit for bit
    project = Net(3, rngs=nnx.Rngs(0))
    nnx.update(project, expected)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 1), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(project(x)))


def test_a_port_error_in_the_tutorial_fails_its_own_check(tmp_path):
    """fc1's rows left in torch's C*H*W order: the cell that compares the outputs must fail."""
    text = SOURCE.read_text(encoding="utf-8")
    assert text.count(FC1_PERMUTATION) == 1
    broken = tmp_path / "tutorial.py"
    broken.write_text(text.replace(FC1_PERMUTATION, ".T"), encoding="utf-8")
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        runpy.run_path(str(broken), run_name="tutorial")


def test_the_page_is_tutorial_length_and_names_only_the_public_api():
    text = PAGE.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 600
    names = set(re.findall(r"flax_lenet\.(\w+)", text))
    assert names <= {"Net", "loss_fn", "train_step", "torch_to_flax", "flax_to_torch"}, names


def test_the_page_says_up_front_which_revision_it_follows_and_todays_is_kernel_size_5():
    first_screen = PAGE.read_text(encoding="utf-8").split("## JAX in one screen")[0]
    for words in ("3×3", "16 * 6 * 6", "5×5", "16 * 5 * 5", "torch.flatten(x, 1)", "Net(kernel_size=5"):
        assert words in first_screen, words
    assert Net(kernel_size=5, rngs=nnx.Rngs(0)).fc1.in_features == 16 * 5 * 5
    assert TorchNet(5).fc1.in_features == 16 * 5 * 5


def test_the_notebooks_install_cell_is_one_pip_line_and_tagged():
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    install = [c for c in cells if "install" in c["metadata"].get("tags", [])]
    assert len(install) == 1 and "".join(install[0]["source"]) == "%pip install -q flax optax torch"
    assert cells.index(install[0]) == 1                           # right after the opening screen


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_in_a_jupyter_kernel(tmp_path):
    """Executed as a reader would in Jupyter, but for the install cell (no network here; every
    package it names is installed with the project's test extra)."""
    import nbclient
    import nbformat
    nb = nbformat.reads(NOTEBOOK.read_text(encoding="utf-8"), as_version=4)
    nb.cells = [c for c in nb.cells if "install" not in c.metadata.get("tags", [])]
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "MseLossBackward0" in printed and "conv_general_dilated" in printed


def test_the_committed_page_and_notebook_are_what_the_script_generates_and_a_changed_word_is_caught(
        tmp_path, monkeypatch):
    import docs.build
    from docs.build import notebook
    assert notebook.build() == {"tutorial.md": PAGE.read_text(encoding="utf-8"),
                                "tutorial.ipynb": NOTEBOOK.read_text(encoding="utf-8")}
    edited = tmp_path / "tutorial.py"
    edited.write_text(SOURCE.read_text(encoding="utf-8").replace("Backprop", "Back-propagate", 1), encoding="utf-8")
    monkeypatch.setattr(notebook, "SOURCE", edited)
    for name, text in notebook.build().items():
        committed = (ROOT / "docs" / name).read_text(encoding="utf-8")
        assert not docs.build.same_but_figures(committed, text), name
