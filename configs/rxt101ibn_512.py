"""ResNeXt-101-IBN-a (32x4d), the reference's four stages: 384 clean -> 384 c2x -> 512 full -> all.

Reference: configs/GLDv2/RXt101ibn_*.yml, 8 GPUs with 40 / 40 / 18 / 18 images each
(global batches 320 / 320 / 144 / 144). ``--config.stages=3,4`` runs the 512 stages only.
"""

from lmr_jax.train.config import base_config, reference_four_stages


def get_config():
    c = base_config("resnext101_ibn_a")
    c.init_checkpoint = "weights/resnext101_ibn_a_imagenet"
    reference_four_stages(c, size_low=384, batch_low=(40, 40), batch_high=18, epochs_high=4)
    return c
