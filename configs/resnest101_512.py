"""ResNeSt-101, the reference's four stages: 384 clean -> 384 c2x -> 512 full -> 512 all.

Reference: configs/GLDv2/ResNeSt101_*.yml, 8 GPUs with 36 / 88 / 40 / 40 images each (global
batches 288 / 704 / 320 / 320), 2 epochs in each 512 stage. ``--config.stages=3,4`` runs the
512 stages only.
"""

from lmr_jax.train.config import base_config, reference_four_stages


def get_config():
    c = base_config("resnest101")
    c.init_checkpoint = "weights/resnest101_imagenet"
    reference_four_stages(c, size_low=384, batch_low=(36, 88), batch_high=40, epochs_high=2)
    return c
