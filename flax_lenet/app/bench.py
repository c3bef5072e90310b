"""Train-step throughput of the Net in torch and Flax, each implementation measured at its best.

Every implementation runs the same step -- forward, MSE loss, backward, ``SGD(lr)`` update --
on the same numpy batch, by default in a fresh process of its own (``run_in_processes``), one
after another; ``--processes one`` runs them all in one process (``run``): all set up first
(compile / warm-up time recorded separately), then measured in interleaved rounds that rotate
the order. The reported figure is the median round, with its spread. Each peer runs at its best
settings:

torch  ``eager``            ``cudnn.benchmark = True`` on a GPU; ``torch.get_num_threads()`` reported
       ``eager-1t``         (CPU) eager with one thread: on a loaded machine OpenMP's spinning
                            workers can cost torch more than the second core gains
       ``compile``          ``torch.compile(net)``; the optimizer step stays eager
       ``compile-cg``       (GPU) ``torch.compile(net, mode="reduce-overhead")``: CUDA graphs
flax   ``train_step``       the teaching step, ``flax_lenet.train_step(model, optimizer, x, y)``
                            (``nnx.jit`` over ``nnx.value_and_grad``, as Flax's examples write it)
       ``fast``             the step ``flax-lenet train`` runs: ``flax_lenet.fast.bound_step(model,
                            optimizer)(x, y)`` (block-wise forward on CPU, bound with ``nnx.jit_partial``)

The headline of each batch size is the best Flax configuration against the best torch one in the
same run; a configuration whose spread over rounds exceeds ``NOISY`` is marked noisy and is
never used for a headline.

Precision: ``default`` is each framework's own (on Ampere/Hopper both run convs in TF32, JAX
its dots too); ``highest`` switches TF32 off in both. On a CPU the two are the same computation,
so only ``default`` runs there.
"""

import dataclasses
import datetime
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field


from flax_lenet.porting import common, parity
from flax_lenet.app import files
from flax_lenet.table import format_table

TORCH_IMPLS = ("eager", "eager-1t", "compile", "compile-cg")
FLAX_IMPLS = ("train_step", "fast")
NOISY = 0.5   # spread (max - min) / median over rounds above which a figure is not a headline
IMPLS = tuple(f"torch:{i}" for i in TORCH_IMPLS) + tuple(f"flax:{i}" for i in FLAX_IMPLS)
CPU_BATCHES = (1, 4, 16, 64, 256, 1024)
GPU_BATCHES = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
PRECISIONS = ("default", "highest")
#: training FLOPs per sample and step: 6 x the forward multiply-adds (k=3: 274,656; k=5: 416,520)
FLOPS_PER_SAMPLE = {3: 1.65e6, 5: 2.50e6}
GPU_ONLY = ("torch:compile-cg",)
CPU_ONLY = ("torch:eager-1t",)


@dataclass(frozen=True)
class BenchConfig:
    device: str = "cpu"                 # "cpu" or "gpu"; both frameworks run there
    batches: tuple = CPU_BATCHES        # batch sizes N
    impls: tuple = IMPLS                # "torch:eager", ... ; those not meant for the device are skipped
    precisions: tuple = ("default",)    # "default" and/or "highest" (TF32 off in both)
    kernel_size: int = 3                # 3: the seed's Net, 5: today's tutorial
    rounds: int = 5                     # interleaved measurement rounds; the median is reported
    min_time: float = 0.2               # seconds per implementation per round (at least 2 steps)
    lr: float = 0.01


@dataclass
class Result:
    impl: str
    precision: str
    batch: int
    samples_per_s: float | None = None  # median over rounds
    step_ms: float | None = None        # median time of one training step
    spread: float | None = None         # (max - min) / median over rounds
    compile_s: float | None = None      # first call: tracing, compiling (or torch warm-up) and one step
    peak_mb: float | None = None        # torch: max_memory_allocated (GPU); flax: compiled args+out+temp
    peak_rss_mb: float | None = None    # the measuring process's peak resident memory (peak_rss_mib)
    note: str = ""
    rounds: list = field(default_factory=list)


# --- helpers -----------------------------------------------------------------------------------

def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (CPU memory, on any device).

    Linux: ``VmHWM`` from ``/proc/self/status``. Not ``ru_maxrss``: Linux carries the forking
    process's peak over ``exec`` into it, so a child of a large process would report its
    parent's peak. Elsewhere ``resource.getrusage`` (macOS reports bytes, Linux KiB).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _torch_state(kernel_size: int):
    import torch

    from torch_reference import Net as TorchNet
    torch.manual_seed(0)
    return TorchNet(kernel_size)


# --- runners: set up once per (impl, precision, batch); run(n) does n steps and synchronises --

class _TorchRunner:
    def __init__(self, impl, precision, x, y, cfg):
        import copy

        import torch
        self.torch, self.impl, self.precision = torch, impl, precision
        self.dev = torch.device("cuda" if cfg.device == "gpu" else "cpu")
        self.threads = 1 if impl == "eager-1t" else torch.get_num_threads()
        self.default_threads = torch.get_num_threads()
        net = copy.deepcopy(_torch_state(cfg.kernel_size)).to(self.dev)
        if self.dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = net
        if impl.startswith("compile"):
            mode = "reduce-overhead" if impl == "compile-cg" else None
            self.model = torch.compile(net, mode=mode)
        self.opt = torch.optim.SGD(net.parameters(), lr=cfg.lr)
        self.crit = torch.nn.MSELoss()
        self.x = torch.from_numpy(x).to(self.dev)
        self.y = torch.from_numpy(y).to(self.dev)
        self.steps_per_call = 1

    def _sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def run(self, n):
        torch = self.torch
        torch.set_num_threads(self.threads)
        try:
            with common.torch_tf32(False if self.precision == "highest" else None):
                for _ in range(n):
                    self.opt.zero_grad(set_to_none=True)
                    loss = self.crit(self.model(self.x), self.y)
                    loss.backward()
                    self.opt.step()
                self._sync()
        finally:
            torch.set_num_threads(self.default_threads)

    def reset_peak(self):
        if self.dev.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mb(self):
        if self.dev.type == "cuda":
            return self.torch.cuda.max_memory_allocated() / 2**20
        return None


class _FlaxRunner:
    """``flax:train_step`` (the teaching step) or ``flax:fast`` (the step ``flax-lenet train`` runs)."""

    def __init__(self, impl, precision, x, y, cfg):
        import jax
        import optax
        from flax import nnx

        from flax_lenet import convert, fast, train
        self.jax, self.impl = jax, impl
        self.prec = "default" if precision == "default" else "highest"
        dev = jax.devices("gpu" if cfg.device == "gpu" else "cpu")[0]
        state = _torch_state(cfg.kernel_size).state_dict()
        with jax.default_device(dev):
            model = convert.to_nnx(convert.torch_to_flax(state))
            optimizer = nnx.Optimizer(model, optax.sgd(cfg.lr), wrt=nnx.Param)
        xj = jax.device_put(convert.nchw_to_nhwc(x), dev)
        yj = jax.device_put(y, dev)
        self.steps_per_call = 1
        if impl == "fast":
            step = fast.bound_step(model, optimizer)
            self._call = lambda: step(xj, yj)
        else:
            self._call = lambda: train.train_step(model, optimizer, xj, yj)

    def run(self, n):
        with self.jax.default_matmul_precision(self.prec):
            loss = None
            for _ in range(n):
                loss = self._call()
            loss.block_until_ready()

    def reset_peak(self):
        pass

    def peak_mb(self):
        return None


def _make_runner(name, precision, x, y, cfg):
    framework, impl = name.split(":")
    return (_TorchRunner if framework == "torch" else _FlaxRunner)(impl, precision, x, y, cfg)


def applicable(cfg: BenchConfig) -> list[str]:
    """The implementations of ``cfg.impls`` that make sense on ``cfg.device``."""
    skip = CPU_ONLY if cfg.device == "gpu" else GPU_ONLY
    return [i for i in cfg.impls if i not in skip]


def _precisions(cfg):
    return [p for p in cfg.precisions if cfg.device == "gpu" or p == "default"]


# --- the measurement ----------------------------------------------------------------------------

def run(cfg: BenchConfig, log=None) -> list[Result]:
    """Measure every applicable implementation at every batch size and precision.

    Args:
      cfg: what to measure (``BenchConfig``).
      log: optional ``print``-like callable for progress lines.

    Returns:
      One ``Result`` per (implementation, precision, batch size), in that order of loops.
    """
    results = []
    say = log or (lambda *a, **k: None)
    for batch in cfg.batches:
        x, y = parity.tutorial_data(batch, 0, "float32")
        for precision in _precisions(cfg):
            runners = {}
            for name in applicable(cfg):
                res = Result(name, precision, batch)
                results.append(res)
                try:
                    t0 = time.perf_counter()
                    r = _make_runner(name, precision, x, y, cfg)
                    r.reset_peak()
                    r.run(1)
                    res.compile_s = time.perf_counter() - t0
                    r.run(1)                             # second call: steady state from here
                    res.peak_mb = r.peak_mb()            # before the others run (torch's peak is global)
                    res.peak_rss_mb = peak_rss_mib()     # the process's, so far (one impl per process: its own)
                    runners[name] = (r, res)
                    say(f"  set up {name} [{precision}] N={batch}: {res.compile_s:.2f} s")
                except Exception as e:  # noqa: BLE001 - one broken peer must not stop the others
                    res.note = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                    say(f"  {name} [{precision}] N={batch} unavailable: {res.note}")
            names = list(runners)
            for rnd in range(cfg.rounds):
                order = names[rnd % len(names):] + names[:rnd % len(names)] if names else []
                for name in order:
                    r, res = runners[name]
                    n = _steps_for(r, cfg.min_time)
                    t0 = time.perf_counter()
                    r.run(n)
                    dt = time.perf_counter() - t0
                    res.rounds.append(batch * n * r.steps_per_call / dt)
            for name in names:
                r, res = runners[name]
                med = statistics.median(res.rounds)
                res.samples_per_s, res.step_ms = med, 1e3 * batch / med
                res.spread = (max(res.rounds) - min(res.rounds)) / med
                if isinstance(r, _TorchRunner):
                    res.note = (res.note + f" threads={r.threads}").strip()
            del runners
    if len(applicable(cfg)) == 1:      # a process of its own: its whole peak is this implementation's
        peak = peak_rss_mib()
        for res in results:
            res.peak_rss_mb = peak if res.peak_rss_mb is not None else None
    return results


def run_in_processes(cfg: BenchConfig, log=None) -> list[Result]:
    """``run``, with each implementation in a fresh process of its own.

    In one process torch's OpenMP threads and XLA's thread pool compete for the same cores,
    which makes torch look slower than it is; measured apart, each framework has the machine to
    itself, and each implementation's peak resident memory (``peak_rss_mb``) is its own
    process's: imports, set-up and every batch size. The children are ``flax-lenet bench
    --processes one``; their results are merged in ``run``'s order.
    """
    say = log or (lambda *a, **k: None)
    results = []
    for impl in applicable(cfg):
        impls = [impl]
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "results.json")
            argv = [sys.executable, "-m", "flax_lenet", "bench", "--processes", "one", "--device", cfg.device,
                    "--batch", ",".join(map(str, cfg.batches)), "--impl", ",".join(impls),
                    "--precision", "both" if len(cfg.precisions) > 1 else cfg.precisions[0],
                    "--kernel-size", str(cfg.kernel_size), "--rounds", str(cfg.rounds),
                    "--min-time", repr(cfg.min_time), "--json", out]
            say(f"  {impl}: a process of its own")
            with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
                for line in proc.stdout:
                    if line.startswith("  "):                   # the child's set-up lines
                        say(line.rstrip())
            if proc.returncode != 0:
                raise RuntimeError(f"bench: the {impl} process failed (exit {proc.returncode}): "
                                   + " ".join(argv))
            with open(out, encoding="utf-8") as f:
                results += [Result(**r) for r in json.load(f)["results"]]
    order = {key: n for n, key in enumerate(itertools.product(cfg.batches, _precisions(cfg), applicable(cfg)))}
    return sorted(results, key=lambda r: order[(r.batch, r.precision, r.impl)])


def _steps_for(runner, min_time) -> int:
    """Calls that fill about ``min_time`` seconds, judged from one timed call (at least 2)."""
    t0 = time.perf_counter()
    runner.run(1)
    dt = max(time.perf_counter() - t0, 1e-6)
    return max(2, int(min_time / dt))


# --- reporting ------------------------------------------------------------------------------------

def environment(cfg: BenchConfig) -> dict:
    """Device, versions, thread counts, date and command line: what the numbers depend on."""
    import flax
    import jax
    import torch
    dev = jax.devices("gpu" if cfg.device == "gpu" else "cpu")[0]
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "device": cfg.device,
        "jax_device": dev.device_kind,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "jax": jax.__version__, "flax": flax.__version__, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if cfg.device == "gpu" and torch.cuda.is_available():
        env["torch_device"] = torch.cuda.get_device_name()
    return env


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def ratios(results: list[Result], versus: str = "torch:eager") -> dict:
    """``{(impl, precision, batch): samples/s / samples/s of versus}`` where both were measured."""
    base = {(r.precision, r.batch): r.samples_per_s for r in results if r.impl == versus and r.samples_per_s}
    return {(r.impl, r.precision, r.batch): r.samples_per_s / base[(r.precision, r.batch)]
            for r in results if r.samples_per_s and (r.precision, r.batch) in base}


def table(results: list[Result], cfg: BenchConfig) -> str:
    """A fixed-width table: one row per result, ratio to torch eager, and the compute-bound fraction."""
    rat = ratios(results)
    header = ["impl", "prec", "N", "samples/s", "step ms", "x torch eager", "compile s", "peak MB",
              "peak RSS MB", "note"]
    rows = []
    for r in results:
        ratio = rat.get((r.impl, r.precision, r.batch))
        rows.append([r.impl, r.precision, str(r.batch),
                     f"{r.samples_per_s:,.0f}" if r.samples_per_s else "-",
                     f"{r.step_ms:.3f}" if r.step_ms else "-",
                     f"{ratio:.2f}" if ratio else "-",
                     f"{r.compile_s:.2f}" if r.compile_s is not None else "-",
                     f"{r.peak_mb:.1f}" if r.peak_mb is not None else "-",
                     f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-",
                     (r.note + (f" spread={r.spread:.0%}" if r.spread is not None else "")).strip()])
    flops = FLOPS_PER_SAMPLE.get(cfg.kernel_size)
    foot = (f"training FLOPs per sample ~{flops / 1e6:.2f} M; spread = (max - min) / median over "
            f"{cfg.rounds} rounds (interleaved with --processes one); peak MB: device memory of the step (GPU torch, or "
            f"Flax's compiled buffers); peak RSS MB: the peak resident memory of the process that "
            f"ran the implementation (with --processes one, of everything set up before it too)")
    return format_table(header, rows, right=range(2, 9)) + "\n" + foot


def to_json(results: list[Result], cfg: BenchConfig, env: dict) -> dict:
    """The whole run as a JSON-ready dict: config, environment, results."""
    return {"config": dataclasses.asdict(cfg), "environment": env,
            "results": [dataclasses.asdict(r) for r in results]}


def plot(results: list[Result], env: dict, path: str) -> None:
    """PNG of throughput against batch size, both frameworks, log-log axes."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    series = {}
    for r in results:
        if r.samples_per_s:
            series.setdefault((r.impl, r.precision), []).append((r.batch, r.samples_per_s))
    for (impl, prec), pts in sorted(series.items()):
        pts.sort()
        style = "-" if impl.startswith("flax") else "--"
        marker = "o" if impl.startswith("flax") else "s"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker=marker, label=f"{impl} [{prec}]")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size N")
    ax.set_ylabel("training samples / s")
    ax.set_title(f"Net train step, {env.get('torch_device') or env.get('jax_device')} "
                 f"(jax {env['jax']}, torch {env['torch']})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    files.write_bytes(path, buf.getvalue())


def summary(results: list[Result], cfg: BenchConfig) -> list[str]:
    """Headline lines: the best Flax configuration against the best torch one, per batch size.

    Configurations with a spread over ``NOISY`` are left out of the headline (and named as noisy);
    each Flax step's ratio to the best torch follows."""
    lines = []
    for prec in _precisions(cfg):
        for n in cfg.batches:
            measured = [r for r in results if r.precision == prec and r.batch == n and r.samples_per_s]
            steady = [r for r in measured if r.spread is None or r.spread <= NOISY]
            noisy = sorted(r.impl for r in measured if r not in steady)

            def best(fw, pool=steady):
                return max((r for r in pool if r.impl.startswith(fw)), default=None, key=lambda r: r.samples_per_s)
            bf, bt = best("flax"), best("torch")
            if bf is None or bt is None:
                lines.append(f"N={n} [{prec}]: no headline: no steady configuration of "
                             f"{'flax' if bf is None else 'torch'} (noisy: {', '.join(noisy) or 'none'})")
                continue
            frac = ""
            flops = FLOPS_PER_SAMPLE.get(cfg.kernel_size)
            if flops:
                frac = f"; best flax = {bf.samples_per_s * flops / 1e9:.1f} GFLOP/s"
            each = ", ".join(f"{r.impl} {r.samples_per_s / bt.samples_per_s:.2f}x" for r in measured
                             if r.impl.startswith("flax") and r is not bf)
            lines.append(f"N={n} [{prec}]: best flax {bf.impl} {bf.samples_per_s / bt.samples_per_s:.2f}x "
                         f"best torch {bt.impl}" + (f" ({each})" if each else "") + frac
                         + (f"; noisy, not used: {', '.join(noisy)}" if noisy else ""))
    return lines
