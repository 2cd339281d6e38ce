"""A hash of each floating-point operation a training step runs, on fixed inputs, under the golden tests' kernel
pins: run it on two processors and the first line that differs names an operation whose result depends on the
processor (docs/TESTING.md).

    python scripts/kernel_fingerprints.py                       # print the fingerprints
    python scripts/kernel_fingerprints.py --compare FILE        # and say which lines differ from FILE's

Lines marked "(not in training)" are kernels the training code avoids because they do depend on the processor
(torch.sqrt and what calls it); they are printed to show that, not compared. tests/test_golden.py compares the
other lines with kernel_fingerprints_amd_epyc.txt beside this script.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

# MKL promises run-to-run reproducibility without STRICT only for aligned arrays. With MKL_CBWR=AVX2 alone the
# step-0 evaluation of the untrained policy on cheetah_run was 10.03 when recorded and 13.37 on 2026-12-02's
# machine (a 1000-step episode turns last-bit differences of the actions into different returns); STRICT drops
# the alignment condition. MKL's AVX2 branch exists on Intel processors only: on an AMD EPYC (2026-12-04) it ran
# the AUTO branch, whose matrix products differ from it, and all three files differed from step 0. COMPATIBLE is
# the branch MKL's BLAS and LAPACK run alike on every x86 maker's processors (its vector math ignores it). numpy
# picks its SIMD kernels when it loads, AVX-512 ones where the processor has them, so those are switched off.
NUMPY_AVX512 = "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL"
PINNED_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": NUMPY_AVX512, "OMP_NUM_THREADS": "1",
}  # fmt: skip
NOT_IN_TRAINING = "(not in training)"
RECORDED = Path(__file__).resolve().parent / "kernel_fingerprints_amd_epyc.txt"


def fingerprints() -> list[tuple[str, str]]:
    """(name, hash) of each operation; torch and numpy are imported here, after the caller set the pins."""
    import numpy as np
    import torch

    torch.set_num_threads(1)

    def digest(value: object) -> str:
        array = value.detach().contiguous().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]

    def normal(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale

    rows = []
    batch, hidden, ensemble = 256, 256, 3
    for index, (m, k, n) in enumerate([(batch, 30, hidden), (batch, hidden, hidden), (batch, hidden, 1),
                                       (30, batch, hidden), (1, 24, hidden), (64, 64, 64)]):  # fmt: skip
        a, b, bias = normal(m, k, seed=index), normal(k, n, seed=100 + index), normal(n, seed=200 + index)
        rows.append((f"mm {m}x{k} @ {k}x{n}", digest(a @ b)))
        rows.append((f"mm {m}x{k} (transposed operand) @ {k}x{n}", digest(a.t().contiguous().t() @ b)))
        rows.append((f"addmm bias + {m}x{k} @ {k}x{n}", digest(torch.addmm(bias, a, b))))
    stacked, weights, bias = normal(ensemble, batch, 30, seed=1), normal(ensemble, 30, hidden, seed=2), normal(
        ensemble, 1, hidden, seed=3)  # fmt: skip
    rows.append(("baddbmm ensemble", digest(torch.baddbmm(bias, stacked, weights))))
    rows.append(("bmm ensemble", digest(torch.bmm(stacked, weights))))
    torch.manual_seed(0)
    layer = torch.nn.Linear(30, hidden)
    torch.nn.init.orthogonal_(layer.weight)
    rows.append(("orthogonal_ init", digest(layer.weight)))

    x = normal(batch, hidden, seed=4, scale=3.0)
    for name, op in [
        ("exp", torch.exp), ("log", lambda t: torch.log(t.abs() + 1.0)), ("tanh", torch.tanh),
        ("softplus", torch.nn.functional.softplus), ("sigmoid", torch.sigmoid), ("relu", torch.relu),
        ("log_softmax", lambda t: torch.log_softmax(t, -1)),
        ("atanh", lambda t: torch.atanh(t.clamp(-0.999, 0.999))), ("rsqrt", lambda t: torch.rsqrt(t.abs() + 1e-3)),
        ("vector_norm", lambda t: torch.linalg.vector_norm(t, dim=-1)),
        ("var_mean", lambda t: torch.stack(torch.var_mean(t, dim=0, correction=0))), ("std", lambda t: t.std(0)),
        ("mean and sum", lambda t: torch.stack([t.mean(), (t**2).sum()])),
    ]:  # fmt: skip
        rows.append((name, digest(op(x))))
    mu, log_std = normal(batch, 6, seed=5), normal(batch, 6, seed=6).clamp(-5, 2)
    log_prob = torch.distributions.Normal(mu, log_std.exp()).log_prob(normal(batch, 6, seed=7))
    rows.append(("Normal.log_prob", digest(log_prob)))
    rows.append(("randn (seeded)", digest(torch.randn(batch, 6, generator=torch.Generator().manual_seed(3)))))
    rows.append(("normal_ (seeded)", digest(torch.empty(batch, 6).normal_(generator=torch.Generator().manual_seed(4)))))
    points = normal(batch, 24, seed=8)
    squared = torch.addmm(points.square().sum(1, keepdim=True) + points.square().sum(1), points, points.T, alpha=-2.0)
    rows.append(("squared distances (k-center)", digest(squared)))

    for fused in (True, False):
        net = torch.nn.Sequential(torch.nn.Linear(30, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        for offset, parameter in enumerate(net.parameters()):
            with torch.no_grad():
                parameter.copy_(normal(*parameter.shape, seed=9 + offset, scale=0.1))
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-4, fused=fused)
        label = "fused Adam" if fused else f"default Adam {NOT_IN_TRAINING}"
        for step in range(3):
            loss = ((net(normal(batch, 30, seed=20 + step)) - normal(batch, 1, seed=30 + step)) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            parameters = torch.cat([parameter.flatten() for parameter in net.parameters()])
            rows.append((f"{label}, parameters after step {step}", digest(parameters)))
    rows.append((f"sqrt {NOT_IN_TRAINING}", digest(x.abs().sqrt())))
    rows.append((f"cdist {NOT_IN_TRAINING}", digest(torch.cdist(points, points))))
    numbers = np.random.default_rng(0).normal(size=(1000, 50))
    rows.append(("numpy exp, tanh, sum", digest(np.stack([np.exp(numbers), np.tanh(numbers)]).sum(0).sum(1))))
    return rows


def read(path: Path) -> dict[str, str]:
    return {line[18:]: line[:16] for line in path.read_text().splitlines() if line.strip()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Path, help="a file this script wrote on another processor")
    parser.add_argument("--pinned", action="store_true", help=argparse.SUPPRESS)  # the child that runs pinned
    args = parser.parse_args()
    if not args.pinned:  # the pins act when the libraries load, so a child process computes under them
        command = [sys.executable, __file__, "--pinned", *(["--compare", str(args.compare)] if args.compare else [])]
        return subprocess.run(command, env={**os.environ, **PINNED_KERNELS}).returncode
    rows = fingerprints()
    for name, value in rows:
        print(f"{value}  {name}")
    if args.compare:
        recorded = read(args.compare)
        differing = [name for name, value in rows if NOT_IN_TRAINING not in name and recorded.get(name) != value]
        for name in differing:
            print(f"differs from {args.compare}: {name}", file=sys.stderr)
        return 1 if differing else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
