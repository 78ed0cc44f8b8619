"""One module per op: validation, allocation and the torch.library registration of its kernels."""
