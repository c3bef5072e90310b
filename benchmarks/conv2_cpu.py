"""conv2 (6 -> 16 channels, 3x3) forward and both gradients: XLA:CPU, flax_lenet.layers, torch.

    python benchmarks/conv2_cpu.py [--batch 256]

Times XLA:CPU's ``conv_general_dilated`` forward, its input and kernel gradients, a
patches-matmul kernel gradient, and the matmul gradients ``flax_lenet.layers`` uses on CPU
(``conv_with_matmul_grads``), against torch's ``F.conv2d`` forward + backward (both gradients)
on the same numbers; median of 7 rounds of 20 calls.
"""

import argparse
import time

import jax
import numpy as np
import torch
from jax import lax

from flax_lenet import layers


def _median_ms(fn, rounds=7, calls=20):
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        if hasattr(out, "block_until_ready"):
            out.block_until_ready()
        times.append((time.perf_counter() - start) / calls)
    return float(np.median(times)) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    n = parser.parse_args().batch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 15, 15, 6)).astype("float32")      # pool1's output, NHWC
    w = rng.standard_normal((3, 3, 6, 16)).astype("float32")       # HWIO
    dy = rng.standard_normal((n, 13, 13, 16)).astype("float32")
    conv = lambda a, k: lax.conv_general_dilated(a, k, (1, 1), "VALID",  # noqa: E731
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    fwd = jax.jit(conv)
    grad_x = jax.jit(lambda g: jax.vjp(lambda a: conv(a, w), x)[1](g)[0])
    grad_w = jax.jit(lambda g: jax.vjp(lambda k: conv(x, k), w)[1](g)[0])
    patches = lambda a: jax.numpy.concatenate(  # noqa: E731
        [a[:, i:i + 13, j:j + 13, :] for i in range(3) for j in range(3)], axis=-1)
    matmul_grads = jax.jit(lambda g: jax.vjp(layers.conv_with_matmul_grads, x, w)[1](g))
    grad_w_mm = jax.jit(lambda a, g: (patches(a).reshape(-1, 54).T @ g.reshape(-1, 16)).reshape(3, 3, 6, 16))

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_()
    dyt = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())

    def torch_step():
        torch.nn.functional.conv2d(xt, wt).backward(dyt)

    rows = {
        "xla forward": _median_ms(lambda: fwd(x, w)),
        "xla grad input": _median_ms(lambda: grad_x(dy)),
        "xla grad kernel": _median_ms(lambda: grad_w(dy)),
        "xla grad kernel, patches @ dy": _median_ms(lambda: grad_w_mm(x, dy)),
        "layers: both gradients as matmuls": _median_ms(lambda: matmul_grads(dy)[1]),
        "torch forward + backward": _median_ms(torch_step),
    }
    print(f"conv2 at N={n} (torch threads {torch.get_num_threads()}, jax {jax.__version__}, torch {torch.__version__})")
    for name, ms in rows.items():
        print(f"  {name:32s} {ms:7.2f} ms")
    xla_total = rows["xla forward"] + rows["xla grad input"] + rows["xla grad kernel"]
    print(f"  xla forward + both gradients     {xla_total:7.2f} ms = "
          f"{xla_total / rows['torch forward + backward']:.1f}x torch")
    ours = rows["xla forward"] + rows["layers: both gradients as matmuls"]
    print(f"  layers forward + both gradients  {ours:7.2f} ms = "
          f"{ours / rows['torch forward + backward']:.1f}x torch")


if __name__ == "__main__":
    main()
