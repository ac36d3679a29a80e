"""The PyTorch backend, laid out by job; mirrors `gptbench.backends.mlx` file for file."""
