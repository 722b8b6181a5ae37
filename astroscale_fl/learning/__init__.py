"""Models and how they learn: torch models, local training loops (plain, stacked, CUDA graphs), centralized mode."""
