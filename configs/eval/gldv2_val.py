"""GLDv2 validation (1,129 GLR2021 test queries x the expanded index; docs/reference.md).

  python scripts/eval.py --config configs/eval/gldv2_val.py:runs/r50_256/stage1/export,256 \
      --config.images=data/gldv2_prepared/store

The text after ``:`` is ``CHECKPOINT[,SIZE]``: one model, extracted on the fly at SIZE px
(default 512). For an ensemble, copy this file and list the models in ``c.models`` (elements of
a list cannot be overridden from the command line).

Each model needs either feature folders (``query_features``, ``index_features``,
``ref_features`` from scripts/extract.py) or a ``checkpoint`` to extract them on the fly
(``images`` must then point at a prepared store or the GLDv2 image root). The reference set for
the Landmark-Country re-ranking is the labelled part of ``reference.list`` (the ``full`` train
list: the ``all`` list holds the validation queries themselves, which are removed if present).

``rerank`` names the re-ranking methods to run (lmr_jax.retrieval.rerank), ``rerank_options``
their options; ``submission_rerank`` is the one written to submission.csv. An ensemble fuses
with the Landmark-Country re-ranking ``before_merge`` (each model re-ranked with its own tags,
then the weighted sum: the setting of the GLR2021 submission) unless
``--config.rerank_options.landmark_country.ensemble=after_merge``. Its reference search is
exact; ``--config.rerank_options.landmark_country.neighbour_search=ivf`` (with ``nprobe``,
``nlist``) makes it approximate and faster on large reference sets (docs/retrieval.md).
``--config.rerank_options.landmark_country.reference_graph_dir=DIR`` caches each model's
reference graph (every ref's top-30 refs) in DIR on the first run and reads it in later ones
(built by the same search, or by ``reference_graph_search=exact``: exact neighbourhoods).
The outputs go to ``workdir``; empty: ``runs/eval/<config file name>``.
"""

import ml_collections
from ml_collections import config_dict


def model(name: str, weight: float = 1.0, size: int = 512, checkpoint: str = ""
          ) -> ml_collections.ConfigDict:
    """One model of the ensemble and where its features come from."""
    return ml_collections.ConfigDict({
        "name": name,
        "weight": weight,
        "checkpoint": checkpoint,
        "query_features": "",
        "index_features": "",
        "ref_features": "",
        # on-the-fly extraction settings
        "size": size,
        "scales": (1.0,),  # (0.707, 1.0, 1.414): the reference's multi-scale
        "flip": False,  # mirrored views too: an lmr-jax extra, not the reference
        "dtype": "bfloat16",
        "batch_size": 32,
    })


def get_config(model_spec: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = ""  # default runs/eval/<config file name>
    c.validation = "data/gldv2_prepared/validation.npz"
    c.solution = ""  # optional Kaggle retrieval_solution_v2.1.csv instead of the validation GT
    c.images = ""  # prepared store or GLDv2 image root (on-the-fly extraction, picture)
    if model_spec:
        checkpoint, _, size = model_spec.partition(",")
        c.models = [model("model", size=int(size or 512), checkpoint=checkpoint)]
    else:
        c.models = [model("R50", size=256)]
    c.reference = ml_collections.ConfigDict({"list": "data/gldv2_prepared/lists/full.npz"})
    c.rerank = ("off", "landmark_country", "kreciprocal")
    c.submission_rerank = "landmark_country"
    c.rerank_options = ml_collections.ConfigDict({
        "off": {},
        "landmark_country": {"ensemble": "before_merge", "k": 3, "alpha": 1.0, "beta": 0.1,
                             "query_kreciprocal": True, "neighbour_search": "exact",
                             "nprobe": 32, "nlist": config_dict.placeholder(int),
                             "reference_graph_dir": config_dict.placeholder(str),
                             "reference_graph_search": config_dict.placeholder(str)},
        "kreciprocal": {"k1": 10, "k2": 3, "lambda_value": 0.3},
    })
    c.top_k = 100
    c.picture = ml_collections.ConfigDict({"num_queries": 8, "num_results": 8})
    return c
