"""``flax-lenet bench`` smoke run: it prints the table and writes the JSON and PNG. No timing claims."""

import json
import os
import subprocess
import sys

import pytest

from flax_lenet.app import bench, cli

SMOKE = ["bench", "--batch", "2", "--rounds", "1", "--min-time", "0.01",
         "--impl", "torch:eager,flax:train_step"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path, png_path = out / "bench.json", out / "bench.png"
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(SMOKE + ["--json", str(json_path), "--png", str(png_path)])
    return rc, buf.getvalue(), json_path, png_path


@pytest.mark.slow
def test_bench_prints_a_row_per_implementation(smoke):
    rc, text, _, _ = smoke
    assert rc == 0
    for impl in ("torch:eager", "flax:train_step"):
        assert any(line.startswith(impl) and " 2 " in line for line in text.splitlines()), impl
    assert "x torch eager" in text
    assert "each implementation in a process of its own" in text and "  torch:eager: a process of its own" in text


@pytest.mark.slow
def test_bench_json_has_a_measured_result_per_implementation(smoke):
    _, _, json_path, _ = smoke
    data = json.loads(json_path.read_text())
    assert data["environment"]["torch"] and data["environment"]["jax"]
    got = {r["impl"]: r for r in data["results"]}
    assert set(got) == {"torch:eager", "flax:train_step"}
    for r in got.values():
        assert r["samples_per_s"] > 0 and r["compile_s"] > 0, r
        assert 50 < r["peak_rss_mb"] < 8192, r              # a process's resident memory, in MiB
    # each implementation measured in a process of its own: torch's process never loaded jax's
    # compiled step, Flax's never ran torch's, so the two peaks are not one process's figure twice
    assert got["torch:eager"]["peak_rss_mb"] != got["flax:train_step"]["peak_rss_mb"]


@pytest.mark.slow
def test_bench_writes_a_png(smoke):
    assert smoke[3].read_bytes()[:8] == PNG_MAGIC


def test_bench_rejects_an_unknown_implementation(capsys):
    assert cli.main(["bench", "--impl", "torch:nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected some of" in err[0] and "torch:nope" in err[0]


def test_bench_refuses_a_missing_output_directory(tmp_path, capsys):
    assert cli.main(SMOKE + ["--json", str(tmp_path / "no" / "b.json")]) == 2
    assert "expected an existing folder" in capsys.readouterr().err


def test_gpu_only_implementations_are_skipped_on_cpu():
    cfg = bench.BenchConfig(device="cpu")
    assert "torch:compile-cg" not in bench.applicable(cfg)
    assert "torch:compile-cg" in bench.applicable(bench.BenchConfig(device="gpu"))


@pytest.mark.slow
def test_compilation_cache_writes_entries_for_a_second_process(tmp_path):
    # in a subprocess: turning the cache on is process-wide
    code = ("import jax, jax.numpy as jnp; from flax_lenet import cache; "
            f"cache.enable({str(tmp_path / 'jax')!r}); jax.jit(lambda x: x * 2 + 1)(jnp.ones(3)).block_until_ready()")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=repo, timeout=120)
    assert any(files for _, _, files in os.walk(tmp_path / "jax"))


def test_compilation_cache_refuses_a_file(tmp_path):
    from flax_lenet import cache
    path = tmp_path / "not-a-dir"
    path.write_text("x")
    from flax_lenet.errors import BadFile
    with pytest.raises(BadFile, match="expected a directory"):
        cache.enable(str(path))


def _result(impl, batch, samples, spread):
    return bench.Result(impl, "default", batch, samples_per_s=samples, step_ms=1e3 * batch / samples, spread=spread)


def test_headline_is_best_flax_against_best_torch_and_leaves_noisy_figures_out():
    cfg = bench.BenchConfig(batches=(64,), impls=bench.IMPLS, kernel_size=3)
    results = [_result("torch:eager", 64, 500.0, 3.9),            # collapsed on a loaded machine: noisy
               _result("torch:eager-1t", 64, 10_000.0, 0.1),
               _result("flax:train_step", 64, 8_000.0, 0.1),
               _result("flax:fast", 64, 25_000.0, 0.2)]
    line, = bench.summary(results, cfg)
    assert line.startswith("N=64 [default]: best flax flax:fast 2.50x best torch torch:eager-1t")
    assert "flax:train_step 0.80x" in line and "noisy, not used: torch:eager" in line
    # the noisy torch figure, were it used, would have made the headline 50x
    results[0] = _result("torch:eager", 64, 500.0, 0.1)
    assert bench.summary(results, cfg)[0].startswith("N=64 [default]: best flax flax:fast 2.50x best torch torch:eager-1t")
    results[1] = _result("torch:eager-1t", 64, 10_000.0, 0.6)
    assert "best flax flax:fast 50.00x best torch torch:eager" in bench.summary(results, cfg)[0]
