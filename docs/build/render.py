"""Render ``content.SECTIONS``, the porting reference, to Markdown and to one self-contained HTML page.

Code comes from ``inspect.getsource`` of the named objects at generation time; the figures come
from running ``flax_lenet.porting.parity.compare`` (seed 0, batch 1, kernel size 3, float64 and float32).
A figure is printed as the power of ten above the measured difference beside its tolerance
("< 1e-15 (limit ≤ 1e-12)"), or as "= 0": the measured digits themselves vary from machine to
machine in their last places, and so can the decade (a one-ulp difference on another CPU), so
``--check`` checks each figure against its limit, not byte for byte.
"""

import functools
import html
import inspect
import textwrap
from pathlib import Path

from docs.build import content, mapping

ROOT = Path(__file__).resolve().parents[2]          # the repository
FILES = ("porting.md", "porting.html")
DTYPES = ("float64", "float32")
GENERATOR = "python -m docs.build"
TITLE = "PyTorch to JAX/Flax: the porting reference"
INTRO = ("Each PyTorch idiom of the neural-network tutorial and the ones a porter meets next, beside its "
         "Flax NNX, Linen, functional and Keras (JAX backend) counterparts. The step-by-step walk-through is "
         "tutorial.md; porting a model of your own is port_your_model.md. Every code block is pulled "
         "from this repository's source when the page is generated; every row names the test that "
         "proves it and says how exact it is: the same bits, the same values within a named tolerance "
         "of flax_lenet.porting.tolerances, or values only.")


# --- inputs: source code, figures, graph -------------------------------------------------------

def source_of(obj) -> tuple[str, str]:
    """``(label, code)``: ``'flax_lenet/model.py: Net'`` and the object's dedented source."""
    obj = inspect.unwrap(obj)                      # jax.jit / nnx.jit wrappers keep __wrapped__
    path = Path(inspect.getsourcefile(obj)).resolve()
    try:
        path = path.relative_to(ROOT)
    except ValueError:
        path = Path(path.name)
    return f"{path.as_posix()}: {obj.__qualname__}", textwrap.dedent(inspect.getsource(obj)).rstrip() + "\n"


def file_text(path: Path) -> str:
    """A source file's text with normalised line endings."""
    return path.read_text(encoding="utf-8").replace("\r\n", "\n")


def fingerprints() -> list[tuple[str, str]]:
    """``[(path, sha256[:16])]`` of every file a code block comes from, so that a change to any
    line of them (not only the lines shown) makes ``--check`` fail."""
    import hashlib
    objs = [o for s in content.SECTIONS for o in (*s.torch, *[x for v in s.flax.values() for x in v])]
    paths = sorted({Path(inspect.getsourcefile(inspect.unwrap(o))).resolve() for o in objs})
    out = []
    for path in paths:
        try:
            label = path.relative_to(ROOT).as_posix()
        except ValueError:
            label = path.name
        out.append((label, hashlib.sha256(file_text(path).encode()).hexdigest()[:16]))
    return out


@functools.lru_cache(maxsize=None)
def measure() -> dict:
    """``{dtype: [parity.Row, ...]}`` from ``parity.compare`` (all flavours, seed 0, batch 1).

    float64 runs inside ``jax.enable_x64(True)`` and float32 inside ``jax.enable_x64(False)``, JAX's
    default: scoped, so ``jax.config`` is left as it was found, and the figures do not depend on
    the caller's mode (``JAX_ENABLE_X64``).
    """
    import jax

    from flax_lenet.porting import parity
    rows = {}
    for d in DTYPES:
        with jax.enable_x64(d == "float64"):
            rows[d] = tuple(parity.compare(dtype=d, kernel_size=3, batch=1, seed=0)[0])
    return rows


def decade_above(value: float) -> str:
    """The smallest power of ten ``>= value``, as ``'1e-07'`` (the measured figure, to its decade)."""
    import math
    return f"1e{math.ceil(math.log10(value)):+03d}".replace("+", "")


def figure(rows) -> str:
    """One cell: '= 0' (bit-identical), '< decade (limit ≤ tol)' when every row passes, else what failed."""
    rows = list(rows)
    if not rows:
        return "—"
    if all(r.max_abs == 0 for r in rows):
        return "= 0 (bit-identical)"
    bad = [r for r in rows if not r.ok]
    if bad:
        return f"FAILS: {bad[0].quantity} ({bad[0].flavour}) > {bad[0].rtol:.0e}"
    measured = max(r.max_rel for r in rows)
    return f"< {decade_above(measured)} (limit ≤ {max(r.rtol for r in rows):.0e})"


def figures(key: str, numbers: dict) -> list[tuple[str, list[str]]]:
    """``[(quantity, [cell per dtype])]`` for one section's compare rows."""
    out = []
    for prefix in content.NUMBERS[key]:
        label = "gradients of all 10 tensors" if prefix == "grad " else prefix
        cells = [figure(r for r in numbers[d] if r.quantity.startswith(prefix)) for d in DTYPES]
        out.append((label, cells))
    return out


# --- Markdown ----------------------------------------------------------------------------------

def _md_table(header, rows) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows])


def _md_code(obj) -> str:
    label, code = source_of(obj)
    return f"`{label}`\n\n```python\n{code}```\n"


def _md_section(i: int, s, numbers, graph_rows) -> str:
    seed = f" ({s.seed})" if s.seed else ""
    parts = [f"## {i}. {s.title}{seed}\n", s.prose + "\n", "### PyTorch\n"]
    parts += [_md_code(o) for o in s.torch]
    for flavour, objs in s.flax.items():
        parts.append(f"### {tab_title(flavour)}\n")
        parts += [_md_code(o) for o in objs]
    if s.extra == "ops":
        parts.append(_md_table(("op", "torch.nn", "torch.nn.functional", "NNX", "Linen", "JAX", "how exact", "proof"),
                               [(r.op, f"`{r.torch_module}`", f"`{r.torch_functional}`", f"`{r.nnx}`",
                                 f"`{r.linen}`", f"`{r.jax}`", r.exact, _md_tests(r)) for r in mapping.OPS]) + "\n")
    if s.extra == "graph":
        from flax_lenet.porting import graph
        parts.append("The primitives of `jax.make_jaxpr(functional.loss_fn)` grouped into layers by "
                     "`flax_lenet.porting.graph`, beside torch's chain:\n\n"
                     "```\n" + graph.render(graph_rows) + "\n```\n")
    if s.notes:
        parts.append("**Differences**\n\n" + "\n".join(f"- {n}" for n in s.notes) + "\n")
    if s.numbers:
        parts.append("**Measured by `flax-lenet compare`** (max |flax − torch| / max |torch|, all three "
                     "flavours, seed 0, batch 1: the power of ten above the largest on the machine that "
                     "generated this page, beside the limit every machine meets)\n\n"
                     + _md_table(("quantity", *DTYPES), [(q, *cells) for q, cells in figures(s.numbers, numbers)])
                     + "\n")
    if s.exact:
        parts.append(f"**How exact:** {s.exact}\n")
    parts.append("**Proved by** " + ", ".join(f"`{t}`" for t in s.tests) + "\n")
    return "\n".join(parts)


def tab_title(flavour: str) -> str:
    """'Flax NNX', 'Flax Linen', 'Flax functional', or 'Keras (JAX backend)'."""
    return "Keras (JAX backend)" if flavour == "Keras" else f"Flax {flavour}"


def _md_tests(row) -> str:
    return ", ".join(f"`{t}`" for t in _row_tests(row))


def _row_tests(row) -> tuple:
    return tuple(t for t in (row.test, row.also, getattr(row, "keras_test", "")) if t)


PITFALL_HEADER = ("layer", "torch", "Flax default", "fix", "test")
PITFALLS_INTRO = ("Where a port goes wrong by default (flax_lenet.porting.pitfalls). Each row has a test "
                  "showing that the default port differs from torch by more than the tolerance and that "
                  "the fix brings it within.")


def pitfall_rows() -> list[tuple[str, ...]]:
    from flax_lenet.porting import pitfalls
    return [(p.layer, p.torch, p.flax, p.fix, p.test) for p in pitfalls.PITFALLS]


def markdown(numbers, graph_rows) -> str:
    """The whole reference as Markdown (PyTorch first, then each Flax flavour, per section)."""
    head = [
        f"# {TITLE}\n",
        f"<!-- generated by `{GENERATOR}` from the project's source; do not edit -->\n",
        INTRO + " The HTML version (`porting.html`) puts PyTorch and Flax in two columns.\n",
        "## How the pieces map\n",
        _md_table(("PyTorch", "JAX / Flax", "Keras (JAX backend)", "note", "how exact", "proof"),
                  [(f"`{r.torch}`", f"`{r.flax}`", f"`{r.keras}`", r.note, r.exact, _md_tests(r))
                   for r in mapping.CONCEPTS]) + "\n",
    ]
    body = [_md_section(i, s, numbers, graph_rows) for i, s in enumerate(content.SECTIONS, 1)]
    body.append(f"## Porting pitfalls\n\n{PITFALLS_INTRO}\n\n"
                + _md_table(PITFALL_HEADER, [(*r[:4], f"`{r[4]}`") for r in pitfall_rows()]) + "\n")
    foot = ["## Generated from\n", _md_table(("file", "sha256 (first 16 hex digits)"),
                                              [(f"`{p}`", h) for p, h in fingerprints()]) + "\n"]
    return "\n".join(head + body + foot)


# --- HTML --------------------------------------------------------------------------------------

CSS = """
:root { --torch: #ee4c2c; --flax: #4a7bd0; --line: #d9dce1; --bg: #fafbfc; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", "Source Han Sans SC",
  "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "WenQuanYi Micro Hei", sans-serif; color: #1f2328; }
main { max-width: 1500px; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; margin: 0 0 .4rem; }
.seed { color: #656d76; font-weight: normal; font-size: .95rem; }
table { border-collapse: collapse; width: 100%; font-size: .85rem; margin: .5rem 0; }
th, td { border: 1px solid var(--line); padding: .3rem .45rem; text-align: left; vertical-align: top; }
th { background: var(--bg); }
.scroll { overflow-x: auto; }
section.step { border-top: 2px solid var(--line); padding: 1.2rem 0; }
.pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 1rem; align-items: start; }
.col { min-width: 0; border: 1px solid var(--line); border-radius: 6px; padding: .5rem; background: #fff; }
.col h3 { margin: 0 0 .4rem; font-size: 1rem; }
.torch h3 { color: var(--torch); } .flax h3 { color: var(--flax); }
.label { font: .78rem ui-monospace, monospace; color: #656d76; margin: .4rem 0 .1rem; }
.hl { background: var(--bg); border-radius: 4px; overflow-x: auto; }
.hl pre { margin: 0; padding: .5rem; font: 12.5px/1.45 ui-monospace, "DejaVu Sans Mono", "Noto Sans Mono CJK SC",
  monospace; white-space: pre-wrap; overflow-wrap: anywhere; }
.tabs > input { position: absolute; opacity: 0; pointer-events: none; }
.tabs > label { display: inline-block; padding: .15rem .6rem; border: 1px solid var(--line);
  border-radius: 4px 4px 0 0; cursor: pointer; font-size: .85rem; margin-right: .2rem; color: #656d76; }
.tabs > input:checked + label { color: #fff; background: var(--flax); border-color: var(--flax); }
.tabs > input:focus-visible + label { outline: 2px solid var(--flax); }
.panel { display: none; }
.tabs > input:nth-of-type(1):checked ~ .panel-1, .tabs > input:nth-of-type(2):checked ~ .panel-2,
.tabs > input:nth-of-type(3):checked ~ .panel-3, .tabs > input:nth-of-type(4):checked ~ .panel-4 { display: block; }
.exact { margin: .2rem 0; } pre.jaxpr { max-height: 28rem; overflow: auto; }
.facts { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 1rem; margin-top: .6rem; }
.facts ul { margin: .2rem 0; padding-left: 1.2rem; }
td code, .proof code { font-size: .8rem; overflow-wrap: anywhere; }
pre.graph { background: var(--bg); padding: .5rem; overflow-x: auto; font-size: 12.5px; }
@media (max-width: 900px) {
  .pair, .facts { grid-template-columns: minmax(0, 1fr); }
  main { padding: .5rem; }
  thead { display: none; }
  table, tbody, tr, td { display: block; width: 100%; }
  tr { border: 1px solid var(--line); border-radius: 6px; margin-bottom: .5rem; }
  td { border: none; border-top: 1px solid var(--line); }
  td:first-child { border-top: none; }
  td::before { content: attr(data-label); display: block; font-weight: 600; color: #656d76; font-size: .75rem; }
}
"""


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


@functools.lru_cache(maxsize=None)
def _formatter():
    from pygments.formatters import HtmlFormatter
    return HtmlFormatter(cssclass="hl", style="default")


def _html_code(obj) -> str:
    from pygments import highlight
    from pygments.lexers import PythonLexer
    label, code = source_of(obj)
    return f'<div class="label">{_esc(label)}</div>' + highlight(code, PythonLexer(), _formatter())


def _html_table(header, rows, code_cols=()) -> str:
    """A table that turns into one card per row on a narrow screen (``data-label`` names each cell)."""
    def cell(i, c):
        text = f"<code>{_esc(c)}</code>" if i in code_cols else _esc(c)
        return f'<td data-label="{_esc(header[i])}">{text}</td>'
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _html_section(i: int, s, numbers, graph_rows) -> str:
    torch_col = "".join(_html_code(o) for o in s.torch)
    tabs = []
    for n, (flavour, objs) in enumerate(s.flax.items(), 1):
        tab_id = f"{s.id}-{flavour.lower()}"
        checked = " checked" if n == 1 else ""
        tabs.append(f'<input type="radio" name="tabs-{s.id}" id="{tab_id}"{checked}>'
                    f'<label for="{tab_id}">{_esc(flavour)}</label>')
    panels = "".join(f'<div class="panel panel-{n}">' + "".join(_html_code(o) for o in objs) + "</div>"
                     for n, objs in enumerate(s.flax.values(), 1))
    parts = [f'<section class="step" id="{s.id}">',
             f'<h2>{i}. {_esc(s.title)} <span class="seed">{_esc(s.seed)}</span></h2>' if s.seed
             else f'<h2>{i}. {_esc(s.title)}</h2>',
             f"<p>{_esc(s.prose)}</p>",
             '<div class="pair">',
             f'<div class="col torch"><h3>PyTorch</h3>{torch_col}</div>',
             f'<div class="col flax"><h3>JAX / Flax / Keras</h3><div class="tabs">{"".join(tabs)}{panels}</div></div>',
             "</div>"]
    if s.extra == "ops":
        parts.append(_html_table(("op", "torch.nn", "torch.nn.functional", "NNX", "Linen", "JAX", "how exact", "proof"),
                                 [(r.op, r.torch_module, r.torch_functional, r.nnx, r.linen, r.jax, r.exact,
                                   ", ".join(_row_tests(r)))
                                  for r in mapping.OPS], code_cols=(1, 2, 3, 4, 5, 7)))
    if s.extra == "graph":
        from flax_lenet.porting import graph
        parts.append("<p>The primitives of <code>jax.make_jaxpr(functional.loss_fn)</code> grouped into layers "
                     "by <code>flax_lenet.porting.graph</code>, beside torch's chain:</p>"
                     f'<pre class="graph">{_esc(graph.render(graph_rows))}</pre>')
    left = ""
    if s.notes:
        left = "<h3>Differences</h3><ul>" + "".join(f"<li>{_esc(n)}</li>" for n in s.notes) + "</ul>"
    right = ""
    if s.numbers:
        right = ("<h3>Measured by <code>flax-lenet compare</code></h3>"
                 "<p>max |flax − torch| / max |torch|, NNX, Linen and functional, seed 0, batch 1: "
                 "the power of ten above the largest on the machine that generated this page, beside "
                 "the limit every machine meets</p>"
                 + _html_table(("quantity", *DTYPES), [(q, *c) for q, c in figures(s.numbers, numbers)]))
    proof = ('<div class="proof"><h3>Proved by</h3><ul>'
             + "".join(f'<li><code>{_esc(t)}</code></li>' for t in s.tests) + "</ul></div>")
    exact = f'<p class="exact"><strong>How exact:</strong> {_esc(s.exact)}</p>' if s.exact else ""
    parts.append(f'<div class="facts"><div>{left}</div><div>{right}{exact}{proof}</div></div></section>')
    return "\n".join(parts)


def page(numbers, graph_rows) -> str:
    """The whole reference as one self-contained HTML page (inline CSS, no scripts, no fetches)."""
    concepts = _html_table(("PyTorch", "JAX / Flax", "Keras (JAX backend)", "note", "how exact", "proof"),
                           [(r.torch, r.flax, r.keras, r.note, r.exact, ", ".join(_row_tests(r)))
                            for r in mapping.CONCEPTS], code_cols=(0, 1, 2, 5))
    sections = "\n".join(_html_section(i, s, numbers, graph_rows) for i, s in enumerate(content.SECTIONS, 1))
    styles = CSS + _formatter().get_style_defs(".hl")
    sources = _html_table(("file", "sha256 (first 16 hex digits)"), fingerprints(), code_cols=(0, 1))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="{_esc(GENERATOR)}">
<title>{_esc(TITLE)}</title>
<style>{styles}</style>
</head>
<body>
<main>
<h1>{_esc(TITLE)}</h1>
<p>{_esc(INTRO)} PyTorch on the left, Flax on the right (NNX; Linen, functional and Keras on the JAX
backend one click away). Generated by <code>{_esc(GENERATOR)}</code>.</p>
<h2>How the pieces map</h2>
{concepts}
{sections}
<section class="pitfalls" id="porting-pitfalls"><h2>Porting pitfalls</h2>
<p>{_esc(PITFALLS_INTRO)}</p>
{_html_table(PITFALL_HEADER, pitfall_rows(), code_cols=(4,))}
</section>
<section class="sources"><h2>Generated from</h2>
{sources}
</section>
</main>
</body>
</html>
"""


def build(numbers=None, graph_rows=None) -> dict[str, str]:
    """``{file name: text}`` for ``FILES``, measuring the figures and the graph unless given."""
    from flax_lenet.porting import graph
    numbers = measure() if numbers is None else numbers
    graph_rows = graph.net_graphs(3) if graph_rows is None else graph_rows
    return {"porting.md": markdown(numbers, graph_rows), "porting.html": page(numbers, graph_rows)}
