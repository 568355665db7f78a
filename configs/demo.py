"""Demo: the four-stage schedule on the synthetic GLDv2-format dataset, on a 2-core CPU.

  python scripts/make_demo_data.py --out data/demo
  python scripts/prepare_gldv2.py --gldv2 data/demo --out data/demo_prepared
  python scripts/train.py --config configs/demo.py --workdir runs/demo/train

The reference recipe's structure at toy scale: a small backbone (resnet_tiny, trained from
scratch: no ImageNet weights are needed) at 64 px, clean -> c2x -> full -> all with the
continent-aware sampler, each stage starting from the previous one's weights; the class count
grows from the clean landmarks (180) to all of them (300) at stage 3, as on GLDv2. Stage 1 is
longer than the reference's because the model starts from random weights; its learning rate is
lower (0.05) because 0.2 was unstable for this small model (one seed of two stayed at chance).

Measured on the 2-core development machine (shared, float32): about 2.5 minutes for the four
stages; validation mAP@100 3.0% untrained, then 19.5 / 19.8 / 22.0 / 29.0% after stages 1-4
(seed 0; seed 1: 20.9 / 21.0 / 25.1 / 32.0%), with ``--config.eval.every_epochs=100``.
"""

from lmr_jax.train.config import base_config, stage


def get_config():
    c = base_config("resnet_tiny")
    c.data.dir = "data/demo_prepared"
    c.data.train.num_workers = 0
    c.data.train.read_threads = 2
    c.precision = "float32"
    c.stages = "1,2,3,4"
    low = dict(image_size=64, batch_size=32, weight_decay=5e-4)
    c.stage1 = stage("clean", "clean", epochs=30, base_lr=0.05, warmup_epochs=1, **low)
    c.stage2 = stage("c2x", "c2x", epochs=8, base_lr=0.02, warmup_epochs=0, **low)
    high = dict(image_size=64, batch_size=32, weight_decay=1e-5, warmup_epochs=0)
    c.stage3 = stage("full", "full", epochs=8, base_lr=0.02, **high)
    c.stage4 = stage("all", "all", epochs=4, base_lr=0.005, sampler="continent", **high)
    c.checkpoint.every_steps = 100
    c.log.every_steps = 10
    return c
