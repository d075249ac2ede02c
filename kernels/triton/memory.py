"""Device memory the Triton kernels' launchers may size their buffers from."""

from __future__ import annotations

import torch


def free_bytes(device: torch.device) -> int:
    """Bytes a new allocation on ``device`` can use: the driver's free memory
    plus what PyTorch's caching allocator holds reserved but unused (blocks
    freed by an earlier stage, e.g. the kNN's temporaries before the path
    search, stay reserved and are invisible to ``cudaMemGetInfo``).
    CPU tensors (the interpreter): a modest fixed 1 GiB."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + max(0, int(cached))
    return 1 << 30
