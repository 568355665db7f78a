"""lmr_jax.retrieval: everything after the model.

Modules: ``extract`` (features of image lists, resumable, sharded) and ``features`` (their
on-disk format); ``search`` (exact chunked top-k, fusion, faiss IVF/HNSW); ``rerank``
(Landmark-Country re-ranking, docs/reference.md, Re-ranking) and ``kreciprocal`` (k-reciprocal Jaccard,
Zhong et al. 2017); ``metrics`` (GLDv2 mAP@100, GAP, Revisited Oxford/Paris) and
``submission`` (Kaggle CSV IO); ``recognition`` (kNN voting); ``evaluate`` (the
``scripts/eval.py --config`` pipeline) and ``visualize`` (result pictures); ``bench``.
"""
