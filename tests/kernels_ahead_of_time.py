"""Compiles the fused blocks' Triton kernels for GPUs that are not here (Triton's CUDA backend, ahead
of time, as a launch on such a GPU would) and says whether contham runs them there:
`contham.solvers.fused_triton.supports` with these compilations in place of the device's and the
device's shared memory per block given. Run by tests/test_fused_triton.py without the interpreter.

    python tests/kernels_ahead_of_time.py CAPABILITY:LIMIT:DTYPE:STATE ...   # e.g. 90:232448:float64:split

Prints one JSON line per case: whether the kernels run there, and the shared memory of each kernel
compiled (bytes; the backward kernels first, and none after one that does not fit).
"""

import json
import sys
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend

from contham import HamiltonianBlock, HamiltonianField, TwoLayerField
from contham.solvers import fused_triton

POINTERS = {torch.float32: "*fp32", torch.float64: "*fp64", torch.int32: "*i32"}


def ahead_of_time(capability: int, shared: list[int]):
    """A stand-in for `fused_triton.compiled` that compiles for a GPU of ``capability`` (e.g. 90)
    and appends each kernel's shared memory to ``shared``."""
    target = GPUTarget("cuda", capability, 32)
    aligned = make_backend(target).parse_attr("D")  # how a launch marks a tensor's pointer (16-byte aligned)

    def compiled(kernel: Any, device: torch.device, *args: Any) -> Any:
        signature, constexprs, attrs = {}, {}, {}
        for i, (param, arg) in enumerate(zip(kernel.params, args)):
            if param.is_constexpr:
                signature[param.name], constexprs[(i,)] = "constexpr", arg
            elif isinstance(arg, torch.dtype):
                signature[param.name], attrs[(i,)] = POINTERS[arg], aligned
            else:
                signature[param.name] = "i32"
        kernel = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target)
        shared.append(kernel.metadata.shared)
        return kernel

    return compiled


def limited_to(limit: int):
    """A stand-in for `fused_triton.shared_memory_limit`: ``limit`` bytes per block."""

    def shared_memory_limit(device: torch.device) -> int:
        return limit

    return shared_memory_limit


BLOCKS = {
    "split": lambda: TwoLayerField(2 * fused_triton.MAX_FEATURES, "tanh", width=fused_triton.MAX_FEATURES, n_nodes=2),
    "whole": lambda: HamiltonianField(16, "J1", "sigmoid", n_nodes=2),
}
"""The fields of the cases: a split state at the largest tiles the kernels take (halves of 64
features, 64 wide: the most shared memory), and a whole state at the smallest (16)."""


def main() -> None:
    for case in sys.argv[1:]:
        capability, limit, dtype, state = case.split(":")
        plan = HamiltonianBlock(BLOCKS[state]()).schedule.fused
        shared: list[int] = []
        fused_triton.compiled = ahead_of_time(int(capability), shared)
        fused_triton.shared_memory_limit = limited_to(int(limit))
        fused_triton.fit.cache_clear()
        runs = fused_triton.supports(plan, getattr(torch, dtype), torch.device("cuda", 0))
        print(json.dumps({"case": case, "runs": runs, "shared": shared}), flush=True)


if __name__ == "__main__":
    main()
