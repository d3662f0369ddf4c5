"""Activations of real images: layer grids, group comparisons, predictions and dataset exemplars."""
