"""PyTorch and timm checkpoints -> lmr_jax models.

``pytorch_files``: reading ``.pth``/``.pt``/``.bin`` and ``.safetensors`` files without PyTorch
(a restricted unpickler: no code in a file can run); ``mapping``: PyTorch key <-> NNX variable
mapping and strict loading; ``timm_names``: timm's key names -> lmr_jax's; ``convert``:
arch-aware conversion of backbone and whole-model checkpoints (used by
``scripts/convert_weights.py``).
"""
