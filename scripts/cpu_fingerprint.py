"""Which CPU code paths torch takes here, and a fingerprint of what they compute: compare two machines in seconds.

    python scripts/cpu_fingerprint.py

Runs the same small float32 computation (a matmul, tanh, log-softmax and its gradient) in fresh processes with the
kernels pareto's Ray workers get for `resources.cpu_kernels: native` and `portable`, and prints, for each, torch's
ATen code path and a sha256 of the results. Two machines whose `portable` fingerprints match compute the same kernels
bit for bit, so one config and seed train the same front on both; `native` fingerprints differ wherever the CPUs
differ. The `portable` line says whether it matches the fingerprint measured on an AMD EPYC (docs/fronts.md).
"""

from __future__ import annotations

import os
import subprocess
import sys

from pareto.distributed.recorder import worker_env

# `portable` on an AMD EPYC (AVX-512, torch 2.13.0+cpu, MKL 2024.2): any x86 CPU with AVX2 should print the same.
PORTABLE_REFERENCE = "eb6ed4def00abaae"

PROBE = """
import hashlib, torch
torch.manual_seed(0); torch.set_num_threads(1)
x = torch.randn(64, 512); w = torch.randn(512, 512, requires_grad=True)
y = torch.log_softmax(torch.tanh(x @ w) @ w.T, -1); y.sum().backward()
print(torch.backends.cpu.get_cpu_capability(),
      hashlib.sha256(y.detach().numpy().tobytes() + w.grad.numpy().tobytes()).hexdigest()[:16])
"""


def fingerprint(cpu_kernels: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in worker_env(cpu_kernels="portable")} | worker_env(
        offline=True, cpu_kernels=cpu_kernels)
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


if __name__ == "__main__":
    for kernels in ("native", "portable"):
        path, digest = fingerprint(kernels).split()
        verdict = "" if kernels == "native" else (
            "  = the reference: this machine trains the reference fronts" if digest == PORTABLE_REFERENCE else
            f"  != the reference {PORTABLE_REFERENCE}: fronts here differ from the reference machine's; please report")
        print(f"cpu_kernels={kernels:<8} ATen path {path:<7} fingerprint {digest}{verdict}")
