"""Compile the Triton kernels of the target pass for a GPU, on a machine without one (CI).

The tests run the kernels under Triton's interpreter, which accepts code the compiler rejects (an
argument named like a launcher local, an interpreted helper function in a compiled kernel, ...).
This script makes Triton believe the active device is an sm_90 (H100) or sm_80 (A100) GPU and
sends every kernel variant through the package's real launch path with ``warmup=True``: Triton
then compiles it to a cubin (TTIR -> TTGIR -> LLVM IR -> PTX -> ptxas, all bundled with Triton)
and launches nothing. Any compiler error fails the script.

Variants: the query kernel for currents and potentials with a dense count table, sorted exact
keys and hashed keys (D = 1 and D = 1024), and the count-table kernel; the Hamming-circuit kernel
for currents and potentials with 1-bit (K = 2), 4-bit (K = 16) and 16-bit (K = 300) fields.

Usage: ``python scripts/check_triton_compile.py [--arch 90 80]``; exit status 1 on any failure.
Relies on Triton internals (``triton.runtime.driver.set_active``, ``run(..., warmup=True)``);
written against triton 3.x.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback

import torch


def _fake_gpu(arch: int):
    """A stand-in driver: Triton compiles for ``GPUTarget("cuda", arch, 32)`` on CPU tensors."""
    from triton.backends.compiler import GPUTarget

    class FakeDriver:
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

    return FakeDriver()


def _cases():
    """``(name, call)`` for every kernel variant; ``call()`` goes through the launch path."""
    import ecd2g_fast as E
    from ecd2g_fast.targets import packed
    from ecd2g_fast.targets import triton as backend

    def batch(K, D, n, seed):
        return torch.randint(0, K, (n, D), generator=torch.Generator().manual_seed(seed))

    cases = []
    for label, (K, D) in {
        "dense table": (50, 2),
        "sorted exact keys": (3, 37),
        "hashed keys D=1024": (7, 1024),
        "hashed keys D=4": (65536, 4),
    }.items():
        circuit = E.Circuit(K, D, 5)
        x, y, z, w = (batch(K, D, n, seed) for seed, n in enumerate((257, 7, 33, 33)))
        layer = torch.randint(0, 5, (33,), generator=torch.Generator().manual_seed(9))
        for normalize in (False, True):
            kind = f"{label}{', normalized' if normalize else ''}"
            current = (layer, z, w, x, y)
            cases.append(
                (
                    f"current, {kind}",
                    lambda c=circuit, a=current, n=normalize: backend.current_targets_triton(
                        c, *a, normalize=n
                    ),
                )
            )
            cases.append(
                (
                    f"potential, {kind}",
                    lambda c=circuit, a=current[:2] + current[3:], n=normalize: (
                        backend.potential_targets_triton(c, *a, normalize=n)
                    ),
                )
            )
    from ecd2g_fast.hamming import targets as hamming

    for K, D in ((2, 64), (2, 784), (16, 64), (300, 9)):
        circuit = E.HammingCircuit(K, D, 4)
        x, y, z = (batch(K, D, n, seed) for seed, n in enumerate((257, 7, 33)))
        w = z.clone()
        w[1:, 0] = (w[1:, 0] + 1) % K  # lateral edges, and one stay edge
        layer = torch.randint(0, 4, (33,), generator=torch.Generator().manual_seed(9))
        for normalize in (False, True):
            kind = f"Hamming K={K} D={D}{', normalized' if normalize else ''}"
            cases.append(
                (
                    f"current, {kind}",
                    lambda c=circuit, a=(layer, z, w, x, y), n=normalize: hamming.current_targets_triton(
                        c, *a, normalize=n
                    ),
                )
            )
            cases.append(
                (
                    f"potential, {kind}",
                    lambda c=circuit, a=(layer, z, x, y), n=normalize: hamming.potential_targets_triton(
                        c, *a, normalize=n
                    ),
                )
            )
    circuit = E.Circuit(7, 5, 2)
    x, y = batch(7, 5, 301, 10), batch(7, 5, 130, 11)
    keys = packed.StateKeys.for_circuit(circuit, x.device)
    cases.append(("count table", lambda: backend._count_table(keys, x, y, circuit.num_states)))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="ecd2g-triton-check-"))
    try:
        import triton
        from triton.runtime.driver import driver
    except ImportError:
        print("triton is not installed: nothing to compile")
        return 0
    from ecd2g_fast.hamming import targets as hamming
    from ecd2g_fast.targets import triton as backend

    module = backend._kernels(False)
    backend._kernels_for = lambda device: module  # the compiled kernels, whatever the tensors' device
    hamming_module = hamming._TRITON_MODULES[True] = hamming._TRITON_MODULES[False] = (
        backend.load_kernel_module(
            hamming.__file__.replace("targets.py", "_triton_targets.py"),
            "ecd2g_fast.hamming._triton_targets",
            False,
        )
    )
    for kernel in (module.targets_kernel, module.count_table_kernel, hamming_module.hamming_sums_kernel):
        launch = kernel.run
        kernel.run = lambda *a, _launch=launch, **kw: _launch(*a, **{**kw, "warmup": True})
    failures = 0
    for arch in args.arch:
        driver.set_active(_fake_gpu(arch))
        for name, call in _cases():
            try:
                call()
                print(f"sm_{arch} {name}: compiled")
            except Exception:  # noqa: BLE001 - report every variant's compiler error
                failures += 1
                print(f"sm_{arch} {name}: FAILED\n{traceback.format_exc()}")
    print(f"triton {triton.__version__}: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
