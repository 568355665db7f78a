"""PyTorch and Paddle checkpoints -> lmr_jax models.

``mapping``: PyTorch key <-> NNX variable mapping and strict loading; ``torch_checkpoint``: safe
reading of ``.pth``/``.safetensors`` files; ``convert``: arch-aware conversion of backbone and
whole-model checkpoints (used by ``scripts/convert_weights.py``). Baidu's GLR2019 Paddle 1.x
checkpoints: ``paddle_format`` (the saved-variable byte format, read without Paddle),
``paddle_names`` (Paddle parameter names of the Baidu models) and ``paddle`` (strict loading,
``load_paddle_model``).
"""
