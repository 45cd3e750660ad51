"""Row-parallel model calls on the CPU: a batch split into contiguous row chunks, one worker thread per chunk,
each worker running its chunk with ONE intra-op thread.

Why hand-rolled (measured, WorldUNet of the shipped teachers, batch 32, 2 cores, torch 2.13 CPU): torch's own
intra-op parallelism over 2 threads makes a forward only 1.36x faster than 1 thread (0.196 s vs 0.266 s), because
the UNet's ops are small (3-5 ms convolutions, many short element-wise ops with a fork/join each); two threads
each running half the rows on one core take 0.154 s (0.142 s with channels-last weights), and the outputs are
bitwise equal to the batched call (every op of the model is per-sample). ``scripts/bench_distill.py`` measures
the effect on whole distillation steps.

``row_parallel(fn, n_rows, workers)`` calls ``fn(slice)`` for each chunk and concatenates the results along dim 0.
Grad mode is carried into the workers (it is thread-local), so a call with autograd on builds one graph whose
backward runs wherever ``backward()`` is called. The chunking depends only on ``n_rows`` and ``workers``: the same
call gives the same numbers every time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

MIN_ROWS = 4   # chunks smaller than this are not worth a thread hop

_pools: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _lock:
        if workers not in _pools:
            # OpenMP's thread count is per OS thread: setting it in the workers leaves the caller's untouched
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="danceopd-rows",
                                                 initializer=torch.set_num_threads, initargs=(1,))
        return _pools[workers]


def chunks(n_rows: int, workers: int) -> list[slice]:
    """Contiguous near-equal row slices, at most ``workers`` of them and none under ``MIN_ROWS`` rows."""
    k = max(1, min(workers, n_rows // MIN_ROWS))
    bounds = [round(i * n_rows / k) for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def row_parallel(fn: Callable[[slice], torch.Tensor], n_rows: int, workers: int,
                 params: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """``torch.cat([fn(s) for s in chunks(n_rows, workers)])``, the chunks evaluated concurrently.

    With autograd on and ``params`` given (the trainable leaves ``fn`` uses; its other inputs must not need
    gradients), the backward pass runs per chunk in the workers as well: each chunk's parameter gradients are
    computed on its own thread and summed in chunk order, so the result does not depend on thread timing.
    Without ``params`` the chunks' graphs are joined by the ``cat`` and backward runs on the calling thread."""
    parts = chunks(n_rows, workers)
    if len(parts) == 1:
        return fn(parts[0])
    if torch.is_grad_enabled() and params:
        return _RowsWithGrad.apply(fn, parts, workers, *params)
    grad = torch.is_grad_enabled()

    def run(s: slice) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            return fn(s)

    return torch.cat(_map(workers, run, [(s,) for s in parts]))


def _map(workers: int, f, arg_tuples) -> list:
    """``[f(*args) for args in arg_tuples]``, evaluated concurrently on the worker pool, results in order."""
    futures = [_pool(workers).submit(f, *args) for args in arg_tuples]
    return [fut.result() for fut in futures]


class _RowsWithGrad(torch.autograd.Function):
    """Forward: each chunk's graph built on a worker thread. Backward: each chunk's parameter gradients computed on
    a worker thread (``torch.autograd.grad``), then summed in chunk order and handed to autograd as this node's
    input gradients (so accumulation into ``.grad`` stays where autograd puts it)."""

    @staticmethod
    def forward(ctx, fn, parts, workers, *params):
        def run(s: slice) -> torch.Tensor:
            with torch.enable_grad():
                return fn(s)

        outs = _map(workers, run, [(s,) for s in parts])
        ctx.outs, ctx.parts, ctx.workers, ctx.params = outs, parts, workers, params
        return torch.cat([o.detach() for o in outs])

    @staticmethod
    def backward(ctx, grad_out):
        params = ctx.params

        def run(out: torch.Tensor, g: torch.Tensor):
            return torch.autograd.grad(out, params, g, allow_unused=True)

        per_chunk = _map(ctx.workers, run, [(o, grad_out[s]) for o, s in zip(ctx.outs, ctx.parts)])
        ctx.outs = None   # free the chunk graphs' references
        grads = []
        for i in range(len(params)):
            gs = [g[i] for g in per_chunk if g[i] is not None]
            total = gs[0] if gs else None
            for g in gs[1:]:
                total = total + g
            grads.append(total)
        return (None, None, None, *grads)


def default_workers(device) -> int:
    """Workers for a model on ``device``: torch's thread count on the CPU (at least 1), 1 elsewhere."""
    return max(1, torch.get_num_threads()) if torch.device(device).type == "cpu" else 1
