"""The ClientApp that each SuperNode runs."""
