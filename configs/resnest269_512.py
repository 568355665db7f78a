"""ResNeSt-269, the reference's four stages: 448 clean -> 448 c2x -> 512 full -> 512 all.

Reference: configs/GLDv2/ResNeSt269_*.yml, 8 GPUs with 28 / 28 / 6 / 6 images each (global
batches 224 / 224 / 48 / 48), 2 epochs in each 512 stage, where the reference also uses
ArcFace s=60, m=0 and weight decay 5e-4. ``--config.stages=3,4`` runs the 512 stages only.
"""

from lmr_jax.train.config import base_config, reference_four_stages


def get_config():
    c = base_config("resnest269")
    c.init_checkpoint = "weights/resnest269_imagenet"
    reference_four_stages(c, size_low=448, batch_low=(28, 28), batch_high=6, epochs_high=2,
                          high_wd=5e-4, high_scale=60.0, high_margin=0.0)
    return c
