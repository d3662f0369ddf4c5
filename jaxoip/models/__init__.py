"""Models: the configurable CNN, its checkpoints (Orbax), the Keras import, and training (one seed or many)."""
