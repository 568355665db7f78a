"""PyTorch checkpoints -> lmr_jax models.

``mapping``: PyTorch key <-> NNX variable mapping and strict loading; ``torch_checkpoint``: safe
reading of ``.pth``/``.safetensors`` files; ``convert``: arch-aware conversion of backbone and
whole-model checkpoints (used by ``scripts/convert_weights.py``).
"""
