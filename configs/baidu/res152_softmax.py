"""Baidu's res152_softmax_v2 recipe: ResNet-152-vd -> average pool -> fc C -> softmax, a
landmark classifier for recognition.

  python scripts/train.py --config configs/baidu/res152_softmax.py --workdir runs/res152_softmax

Known (Baidu's code, docs/baidu.md): the ``baidu_softmax_v2`` head (a linear layer with bias on
the pooled 2048-d features, C from the image list; ``--config.model.head=baidu_softmax_v1``
adds the 256-d fc of v1), trained with softmax cross-entropy (``linear_softmax``), images
224 x 224 as Baidu's classifiers were run at; Momentum 0.9, L2 decay 1e-4. Chosen here (not
published): one stage on the ``full`` list, base learning rate 0.1 for a batch of 256,
10 epochs with one warmup epoch and cosine decay; see lmr_jax.train.config.baidu_config for the shared
choices.
"""

from lmr_jax.train.config import baidu_config, stage


def get_config():
    c = baidu_config("baidu_softmax_v2", "linear_softmax")
    c.classifier.name = "none"
    c.stage1 = stage("full", "full", image_size=224, epochs=10, base_lr=0.1, batch_size=256,
                     warmup_epochs=1, weight_decay=1e-4)
    return c
