"""PyTorch, timm and Paddle checkpoints -> lmr_jax models.

``pytorch_files``: reading ``.pth``/``.pt``/``.bin`` and ``.safetensors`` files without PyTorch
(a restricted unpickler: no code in a file can run); ``mapping``: PyTorch key <-> NNX variable
mapping and strict loading; ``timm_names``: timm's key names -> lmr_jax's; ``convert``:
arch-aware conversion of backbone and whole-model checkpoints (used by
``scripts/convert_weights.py``). Baidu's GLR2019 Paddle 1.x checkpoints: ``paddle_format`` (the
saved-variable byte format, read without Paddle), ``paddle_names`` (Paddle parameter names of the
Baidu models) and ``paddle`` (strict loading, ``load_paddle_model``).
"""
