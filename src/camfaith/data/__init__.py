"""Datasets: generation/download, indexing, splitting and image loading."""
