"""Workstation tools: datasets, models, losses and training (PyTorch). Run from a checkout:
``python -m train`` or ``edge-detect train``. Never imported by the runtime."""
