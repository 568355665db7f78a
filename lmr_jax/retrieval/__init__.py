"""lmr_jax.retrieval: everything after the model.

Modules: ``extract`` (features of image lists, resumable, sharded) and ``features`` (their
on-disk format); ``embedding`` (the one embedding path: views, multi-scale, normalisation);
``search`` (exact chunked top-k, fusion, faiss IVF/HNSW); ``ivf`` (the inverted file
searched with one matrix product per list); ``rerank`` (the one re-ranking
interface and its registry: plain search, Landmark-Country, k-reciprocal, for one model or an
ensemble), ``landmark_country`` (the Landmark-Country re-ranking of one model) and
``kreciprocal`` (k-reciprocal Jaccard, Zhong et al. 2017); ``metrics`` (GLDv2 mAP@100, GAP,
Revisited Oxford/Paris) and ``submission`` (Kaggle CSV IO); ``recognition`` (kNN voting);
``offline_evaluation`` (the ``scripts/eval.py --config`` pipeline) and ``visualize`` (result
pictures).
"""
