"""Baidu's res152_npairs recipe: ResNet-152-vd -> average pool -> fc 512, N-pairs loss.

  python scripts/train.py --config configs/baidu/res152_npairs.py --workdir runs/res152_npairs

Known (Baidu's code, docs/baidu.md): batches of (anchor, positive) pairs of distinct classes
(the ``pairs`` sampler), raw dot products, soft-label cross-entropy plus 0.5 x 0.01 x the mean
squared embedding norm; Momentum 0.9, L2 decay 1e-4, base learning rate 1e-4; a per-device batch
of 120 images (60 pairs; Baidu's script default). Chosen here (not published): one stage on the
``full`` list at 448 px, 10 epochs with cosine decay and no warmup, a global batch of 120 (one
device's; with several devices the N-pairs logits span the whole global batch, which is
Baidu's per-device loss only with ``bn_mode`` and batch per device alike); see
lmr_jax.train.config.baidu_config for the shared choices.
"""

from lmr_jax.train.config import baidu_config, stage


def get_config():
    c = baidu_config("baidu_embedding", "npairs")
    c.classifier.name = "none"
    c.stage1 = stage("full", "full", image_size=448, epochs=10, base_lr=1e-4, batch_size=120,
                     warmup_epochs=0, weight_decay=1e-4, sampler="pairs")
    return c
