"""Quick debug recipe: ResNet-50 at 256 px on the clean list, 10 epochs (one stage).

Reference: configs/GLDv2/R50_256.yml (about mAP@100 32.8% on the validation set), 8 GPUs with
128 images each (global batch 1024).
"""

from lmr_jax.train.config import base_config, stage


def get_config():
    c = base_config("resnet50")
    c.init_checkpoint = "weights/resnet50_imagenet"
    c.stages = "1"
    c.stage1 = stage("clean", "clean", image_size=256, epochs=10, base_lr=0.08,
                     batch_size=8 * 128, warmup_epochs=1, weight_decay=5e-4)
    return c
