"""Baidu's res152_arcmargin recipe: ResNet-152-vd -> average pool -> fc 512, ArcMargin loss.

  python scripts/train.py --config configs/baidu/res152_arcmargin.py --workdir runs/res152_arcmargin

Known (Baidu's code, docs/baidu.md): ArcMargin with s 80, m 0.15, not easy margin, on the
cosines to L2-normalised class weights; Momentum 0.9, L2 decay 1e-4, base learning rate 0.01.
Chosen here (not published): one stage on the ``full`` list at 448 px, 10 epochs with one
warmup epoch and cosine decay, a global batch of 128, the shuffling sampler; see
lmr_jax.train.config.baidu_config for the shared choices.
"""

from lmr_jax.train.config import baidu_config, stage


def get_config():
    c = baidu_config("baidu_embedding", "arcmargin")
    c.classifier.name = "cosine"
    c.stage1 = stage("full", "full", image_size=448, epochs=10, base_lr=0.01, batch_size=128,
                     warmup_epochs=1, weight_decay=1e-4, logit_scale=80.0, margin=0.15)
    return c
