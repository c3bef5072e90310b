"""The generated docs cannot drift from the code, and the porting reference renders in a real browser.

The generator is ``docs/build/`` (``python -m docs.build``, not installed); the tests run it from
the repository root, in a subprocess or by importing ``docs.build`` (the root is on ``sys.path``
under ``python -m pytest``).
"""

import ast
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import docs.build
from docs.build import content, mapping, render

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDE = (1400, 900)                       # desktop viewport, CSS px
NARROW = (390, 844)                      # a phone: the columns must stack
BROWSER_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def x64_seen_by_the_figures():
    """``jax_enable_x64`` before and after the figures are measured, by the first test of this
    process that needs them (measured again if another module of this process measured first)."""
    import jax
    before = jax.config.jax_enable_x64
    fresh = render.measure.cache_info().currsize == 0
    numbers = render.measure() if fresh else render.measure.__wrapped__()
    return before, jax.config.jax_enable_x64, numbers


@pytest.fixture(scope="module")
def generated(x64_seen_by_the_figures):
    """The docs as the code generates them now (figures and parity runs made once per process)."""
    return docs.build.build()


def all_test_links():
    links = [t for r in (*mapping.CONCEPTS, *mapping.OPS) for t in (r.test, r.also, getattr(r, "keras_test", ""))]
    links = [t for t in links if t]
    return sorted(set(links + [t for s in content.SECTIONS for t in s.tests]))


# --- it cannot drift -----------------------------------------------------------------------------

@pytest.mark.slow
def test_docs_check_passes_on_the_committed_docs(generated, capsys):
    """``python -m docs.build --check`` on the repository's docs/ (the generated text is cached
    in this process, so the check costs a comparison)."""
    assert docs.build.main(["--check"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "up to date" in printed, printed


@pytest.mark.slow
def test_generating_leaves_jax_config_as_it_found_it(x64_seen_by_the_figures):
    """The float64 figures are measured inside ``jax.enable_x64(True)``, not with a global switch."""
    before, after, numbers = x64_seen_by_the_figures
    assert after == before
    assert all(r.ok for d in render.DTYPES for r in numbers[d])


def write_docs(generated, folder: Path) -> Path:
    for name, text in generated.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("obj", [content.SECTIONS[0].torch[0], content.SECTIONS[0].flax["NNX"][0],
                                 content.SECTIONS[0].flax["Linen"][0], content.SECTIONS[0].flax["Keras"][0]],
                         ids=["torch", "nnx", "linen", "keras"])
@pytest.mark.slow
def test_docs_check_fails_after_a_model_source_line_changes(generated, tmp_path, monkeypatch, capsys, obj):
    out = str(write_docs(generated, tmp_path))
    assert docs.build.main(["--check", "--out", out]) == 0             # figures are cached: cheap
    original = render.source_of

    def edited(o):
        label, code = original(o)
        return (label, code.replace("relu", "gelu", 1)) if o is obj else (label, code)

    monkeypatch.setattr(render, "source_of", edited)
    assert docs.build.main(["--check", "--out", out]) == 1
    printed = capsys.readouterr().out
    assert "porting.md differs at line" in printed and "porting.html differs at line" in printed


@pytest.mark.slow
def test_docs_check_fails_after_a_line_outside_the_shown_code_changes(generated, tmp_path, monkeypatch):
    out = str(write_docs(generated, tmp_path))
    original = render.file_text
    monkeypatch.setattr(render, "file_text", lambda path: original(path) + (
        "# a new comment\n" if path.name == "model.py" and path.parent.name == "flax_lenet" else ""))
    assert docs.build.main(["--check", "--out", out]) == 1


def inputs(generated):
    """The (cached) figures and graph that produced ``generated``."""
    from flax_lenet.porting import graph
    return render.measure(), graph.net_graphs(3)


@pytest.mark.slow
def test_figures_change_when_a_comparison_fails(generated):
    numbers, graph_rows = inputs(generated)
    broken = dict(numbers)
    row = next(r for r in numbers["float32"] if r.quantity == "logits")
    broken["float32"] = tuple(r if r is not row else type(r)(r.quantity, r.flavour, 1.0, 1.0, r.rtol)
                              for r in numbers["float32"])
    assert render.markdown(numbers, graph_rows) == generated["porting.md"]
    text = render.markdown(broken, graph_rows)
    assert "FAILS: logits" in text and text != generated["porting.md"]


@pytest.mark.slow
def test_figures_show_the_measured_decade_beside_the_limit(generated):
    numbers, _ = inputs(generated)
    cells = {c for s in content.SECTIONS if s.numbers for _, row in render.figures(s.numbers, numbers) for c in row}
    assert "= 0 (bit-identical)" in cells
    limits = set()
    for cell in cells - {"= 0 (bit-identical)"}:
        m = re.fullmatch(r"< 1e-(\d\d) \(limit ≤ 1e-(\d\d)\)", cell)
        assert m, cell
        assert int(m.group(1)) > int(m.group(2)), f"measured not below its limit: {cell}"
        limits.add(int(m.group(2)))
    assert limits == {12, 5}
    logits = next(r for r in numbers["float32"] if r.quantity == "logits")
    assert f"< {render.decade_above(logits.max_rel)}" in generated["porting.md"]


def test_a_figure_is_the_power_of_ten_above_the_largest_measured_difference():
    assert [render.decade_above(v) for v in (8.9e-8, 1e-7, 1.01e-7, 3.7e-16, 0.5)] == \
        ["1e-07", "1e-07", "1e-06", "1e-15", "1e00"]


def test_headings_in_chinese_have_a_cjk_capable_font_stack():
    assert any("\u4e00" <= ch <= "\u9fff" for s in content.SECTIONS for ch in s.seed)
    body = next(line for line in render.CSS.split("}") if line.strip().startswith("body"))
    assert "Noto Sans CJK SC" in body and "Microsoft YaHei" in body and "PingFang SC" in body


@pytest.mark.slow
def test_every_code_block_is_the_current_source_of_a_named_object(generated):
    md = generated["porting.md"]
    sources = {render.source_of(o)[1] for s in content.SECTIONS for o in (*s.torch, *[x for v in s.flax.values() for x in v])}
    shown = re.findall(r"```python\n(.*?)```\n", md, flags=re.S)
    blocks = set(shown)
    assert blocks == sources                                     # nothing pasted, nothing missing
    assert len(shown) == len(blocks), "a code block is shown twice"
    assert "class Net(nn.Module):" in md and "class Net(nnx.Module):" in md


@pytest.mark.slow
def test_every_section_and_mapping_row_says_how_exact_it_is(generated):
    rows = [*content.SECTIONS, *mapping.CONCEPTS, *mapping.OPS]
    assert all(r.exact for r in rows)
    words = ("same bits", "FLOAT64", "FLOAT32_CPU", "values only", "structur", "dtypes", "traces", "tensors")
    assert all(any(w in r.exact for w in words) for r in rows), [r.exact for r in rows]
    md = generated["porting.md"]
    assert md.count("**How exact:**") == len(content.SECTIONS)


def test_every_linen_tab_shows_linen_code_and_the_tutorials_steps_have_a_keras_tab():
    """A row leaves out Linen or Keras only where its idiom is NNX's; every step of the tutorial has both."""
    steps = ("define", "layers", "inputs", "loss", "graph", "backprop", "update", "call")
    for s in content.SECTIONS:
        assert s.flax and next(iter(s.flax)) == "NNX", s.id
        if s.id in steps:
            assert "Keras" in s.flax and "Linen" in s.flax, s.id
        if s.id in ("define", "call") or "Linen" not in s.flax:
            continue
        code = "".join(render.source_of(o)[1] for o in s.flax["Linen"])
        assert "variables" in code, f"{s.id}: the Linen tab does not work on a Linen variables dict"
        assert "functional.loss_fn" not in code and "check_images" not in code, f"{s.id}: functional code"


def test_every_linked_test_exists():
    links = all_test_links()
    assert len(links) >= 20
    for link in links:
        path, name = link.split("::")
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"{link}: no such test"


@pytest.mark.slow
def test_html_is_one_self_contained_file(generated):
    page = generated["porting.html"]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "an external fetch"
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert page.count('<section class="step"') == len(content.SECTIONS)
    for link in all_test_links():
        assert link in page and link in generated["porting.md"], link


@pytest.mark.slow
def test_docs_writes_both_files_whole_and_leaves_no_temporary_files(generated, tmp_path):
    out = tmp_path / "new" / "docs"
    assert docs.build.main(["--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(docs.build.FILES)
    for name, text in generated.items():
        assert (out / name).read_text(encoding="utf-8") == text
        assert (out / name).stat().st_mode & 0o044 == 0o044 & ~current_umask()     # not mkstemp's 0600


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_docs_out_must_be_a_folder(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    assert docs.build.main(["--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a folder" in err and target.read_text() == "keep me"



@pytest.mark.parametrize("missing, why", [("keras", "the Keras tabs are generated from keras_reference"),
                                           ("pygments", "the HTML page's code is highlighted by pygments")])
def test_docs_without_keras_or_pygments_is_one_line_saying_how_to_install_it(tmp_path, capsys, monkeypatch,
                                                                             missing, why):
    """Before: an ImportError traceback. keras and pygments are the generator's, not the package's (the [docs] extra)."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    assert docs.build.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"python -m docs.build: error: expected {missing} installed ({why}), found none: " \
                  "pip install -e '.[docs]'\n"
    assert list(tmp_path.iterdir()) == []

# --- a real browser --------------------------------------------------------------------------------

class Chromium:
    """Headless Chromium driven over the DevTools protocol (one page, one websocket)."""

    def __init__(self, profile: Path):
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + BROWSER_TIMEOUT_S
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"chromium did not start (exit code {self.proc.poll()})")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        import websocket
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=BROWSER_TIMEOUT_S,
                                              suppress_origin=True)
        self.next_id, self.events = 0, []

    def send(self, method, **params):
        """Call a DevTools method; events that arrive meanwhile are kept in ``self.events``."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event):
        """Block until ``event`` arrives (or has arrived)."""
        while not any(e.get("method") == event for e in self.events):
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, and requests for anything but the page's own file."""
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert", "warning"):
                out.append(f"console.{p['type']}: {[a.get('value') for a in p['args']]}")
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry']['text']}")
            elif method == "Network.requestWillBeSent" and not p["request"]["url"].startswith(("file:", "data:", "about:")):
                out.append(f"network fetch: {p['request']['url']}")
        return out

    def open(self, path: Path, size):
        self.events.clear()
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.viewport(size)
        self.send("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def viewport(self, size):
        self.send("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1],
                  deviceScaleFactor=1, mobile=size[0] < 600)

    def screenshot(self, path: Path):
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self):
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


#: Per section: the two columns' boxes and whether each shows highlighted code.
LAYOUT_JS = """JSON.stringify([...document.querySelectorAll('section.step')].map(s => {
  const box = sel => { const el = s.querySelector(sel); if (!el) return null;
    const r = el.getBoundingClientRect(), st = getComputedStyle(el);
    const code = [...el.querySelectorAll('.hl')].filter(c => c.getClientRects().length > 0 &&
      c.getBoundingClientRect().height > 10).length;
    return {left: r.left, top: r.top, bottom: r.bottom, width: r.width, height: r.height, code: code,
            shown: st.display !== 'none' && st.visibility !== 'hidden' && st.opacity !== '0'}; };
  return {id: s.id, torch: box('.col.torch'), flax: box('.col.flax')};
}).concat([{page: document.documentElement.scrollWidth, view: innerWidth}]))"""


def layout(browser):
    rows = json.loads(browser.evaluate(LAYOUT_JS))
    return rows[:-1], rows[-1]


def column_problems(sections, stacked: bool) -> list[str]:
    """What is wrong with the two columns of each section ('' when both show code, aligned)."""
    out = []
    for s in sections:
        for side in ("torch", "flax"):
            b = s[side]
            if not b or not b["shown"] or b["width"] < 100 or b["height"] < 40 or b["code"] < 1:
                out.append(f"{s['id']}: {side} column not visible: {b}")
        if out or not s["torch"] or not s["flax"]:
            continue
        if not stacked and abs(s["torch"]["top"] - s["flax"]["top"]) > 1:
            out.append(f"{s['id']}: columns not aligned: tops {s['torch']['top']} vs {s['flax']['top']}")
        if not stacked and s["flax"]["left"] < s["torch"]["left"] + s["torch"]["width"]:
            out.append(f"{s['id']}: columns overlap")
        if stacked and s["flax"]["top"] < s["torch"]["bottom"]:
            out.append(f"{s['id']}: columns not stacked on a narrow screen")
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install -y chromium)")
    b = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.mark.slow
def test_html_shows_both_columns_of_every_section_without_console_errors(browser, tmp_path):
    page = DOCS / "porting.html"
    browser.open(page, WIDE)
    sections, size = layout(browser)
    assert [s["id"] for s in sections] == [s.id for s in content.SECTIONS]
    assert column_problems(sections, stacked=False) == []
    browser.screenshot(tmp_path / "porting_wide.png")
    browser.viewport(NARROW)
    sections, size = layout(browser)
    assert column_problems(sections, stacked=True) == []
    assert size["page"] <= size["view"] + 1, f"page scrolls sideways on a phone: {size}"
    browser.screenshot(tmp_path / "porting_narrow.png")
    assert browser.problems() == []
    assert (tmp_path / "porting_wide.png").stat().st_size > 10_000


#: Code blocks whose text is wider than the box that shows it (clipped, or hidden behind a scrollbar).
CLIPPED_JS = """JSON.stringify([...document.querySelectorAll('.hl pre')].filter(p => p.getClientRects().length > 0)
  .filter(p => p.scrollWidth > p.clientWidth + 1 || p.parentElement.scrollWidth > p.parentElement.clientWidth + 1)
  .map(p => p.innerText.split('\\n').reduce((a, b) => a.length >= b.length ? a : b)))"""


@pytest.mark.slow
def test_no_code_is_clipped_at_1400_px(browser, tmp_path):
    browser.open(DOCS / "porting.html", WIDE)
    assert json.loads(browser.evaluate(CLIPPED_JS)) == []
    clipping = tmp_path / "clipping.html"                           # the broken twin: lines kept whole
    html = (DOCS / "porting.html").read_text(encoding="utf-8")
    clipping.write_text(html.replace("</style>", ".hl pre { white-space: pre; }</style>"), encoding="utf-8")
    browser.open(clipping, WIDE)
    assert json.loads(browser.evaluate(CLIPPED_JS)) != []


@pytest.mark.slow
def test_flax_tabs_switch_between_nnx_linen_functional_and_keras(browser):
    browser.open(DOCS / "porting.html", WIDE)
    visible = "getComputedStyle(document.querySelector('#define .panel-{n}')).display"
    assert [browser.evaluate(visible.format(n=n)) for n in (1, 2, 3, 4)] == ["block", "none", "none", "none"]
    browser.evaluate("document.querySelector('label[for=define-linen]').click()")
    assert [browser.evaluate(visible.format(n=n)) for n in (1, 2, 3, 4)] == ["none", "block", "none", "none"]
    assert "class Net(nn.Module)" in browser.evaluate("document.querySelector('#define .panel-2').innerText")
    browser.evaluate("document.querySelector('label[for=define-keras]').click()")
    assert [browser.evaluate(visible.format(n=n)) for n in (1, 2, 3, 4)] == ["none", "none", "none", "block"]
    assert "class Net(keras.Model)" in browser.evaluate("document.querySelector('#define .panel-4').innerText")
    keras_panel = "getComputedStyle(document.querySelector('#freeze .panel-3')).display"   # NNX, Linen, Keras
    browser.evaluate("document.querySelector('label[for=freeze-keras]').click()")
    assert browser.evaluate(keras_panel) == "block"
    assert "trainable = False" in browser.evaluate("document.querySelector('#freeze .panel-3').innerText")


@pytest.mark.slow
def test_browser_check_fails_for_a_hidden_column_and_a_console_error(browser, tmp_path):
    broken = tmp_path / "broken.html"
    html = (DOCS / "porting.html").read_text(encoding="utf-8")
    broken.write_text(html.replace("</style>", "#loss .flax { display: none; }</style>").replace(
        "</body>", "<script>console.error('boom')</script></body>"), encoding="utf-8")
    browser.open(broken, WIDE)
    sections, _ = layout(browser)
    assert [p.split(":")[0] for p in column_problems(sections, stacked=False)] == ["loss"]
    assert any("boom" in p for p in browser.problems())


def test_check_takes_a_figure_that_moved_under_its_limit_but_not_one_over_it_nor_any_other_change():
    """Figures are powers of ten above a difference measured on this CPU: ``--check`` lets each move
    (other kernels, one ulp) as long as it stays within its limit, and fails on anything else."""
    page = "| loss | < 1e-15 (limit ≤ 1e-12) | < 1e-07 (limit ≤ 1e-05) |\n<td>&lt; 1e-07 (limit ≤ 1e-05)</td>\n"
    assert docs.build.same_but_figures(page, page.replace("< 1e-07", "< 1e-06"))
    assert docs.build.same_but_figures(page, page.replace("&lt; 1e-07", "&lt; 1e-09"))
    assert docs.build.same_but_figures(page, page.replace("< 1e-15", "< 1e-13"))
    assert not docs.build.same_but_figures(page, page.replace("< 1e-07", "< 1e-04"))     # over its limit
    assert not docs.build.same_but_figures(page, page.replace("< 1e-15", "< 1e-11"))
    assert not docs.build.same_but_figures(page, page.replace("limit ≤ 1e-05", "limit ≤ 1e-04"))
    assert not docs.build.same_but_figures(page, page.replace("loss", "grad"))
