"""SE-ResNet-101-IBN-a, the reference's four stages: 384 clean -> 384 c2x -> 512 full -> 512 all.

Run all stages:   python scripts/train.py --config configs/ser101ibn_512.py --workdir runs/ser101ibn_512
Run some stages:  ... --config.stages=3,4   (stage 3 starts from runs/.../stage2/export)
Reference: configs/GLDv2/SER101ibn_{384,384_finetune,512_finetune,512_all}.yml, 8 GPUs with
96 / 96 / 18 / 18 images each (global batches 768 / 768 / 144 / 144).
"""

from lmr_jax.train.config import base_config, reference_four_stages


def get_config():
    c = base_config("se_resnet101_ibn_a")
    c.init_checkpoint = "weights/se_resnet101_ibn_a_imagenet"
    reference_four_stages(c, size_low=384, batch_low=(96, 96), batch_high=18, epochs_high=4)
    return c
