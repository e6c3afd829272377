"""Published architectures of the diffusion families, built with random weights (benchmarks only)."""
