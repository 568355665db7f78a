"""Independent PyTorch reference modules for the parity tests.

Written from the architecture facts in tests/data/torch_manifests/README.md; nothing here imports
lmr_jax, so a bug in lmr_jax cannot hide in the reference.
"""
