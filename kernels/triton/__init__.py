"""GPU kernels (Triton): fused kNN and batched shortest-path statistics."""
