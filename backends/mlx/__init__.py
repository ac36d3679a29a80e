"""The MLX backend, laid out by job; mirrors `gptbench.backends.torch` file for file."""
