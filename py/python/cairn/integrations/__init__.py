"""Integrations with training frameworks. Each is a module of its own and imports its framework
only when imported itself, so ``import cairn`` works without any of them installed:

- :mod:`cairn.integrations.transformers`: ``CairnCallback`` for the Hugging Face ``Trainer``;
- :mod:`cairn.integrations.lightning`: ``CairnCheckpointIO`` for PyTorch Lightning.

Plain PyTorch loops use :mod:`cairn.torch` (``save`` / ``load``).
"""
