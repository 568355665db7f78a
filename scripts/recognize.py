"""Landmark recognition (GLDv2 2019 task) by similarity-weighted voting over reference neighbours.

  python scripts/recognize.py --queries features/test --refs features/train \
      --ref_list data/gldv2/all.npz --output recognition.csv [--solution recognition_solution.csv]

--queries / --refs are folders written by scripts/extract.py; the reference labels come from
the ImageList of the reference images (matched by id). Writes a Kaggle ``id,landmarks`` CSV;
with --solution (``id,landmarks,Usage``) it prints the GAP as JSON on the last line.
"""

import json

from absl import app, flags

_QUERIES = flags.DEFINE_string("queries", None, "Query feature folder.", required=True)
_REFS = flags.DEFINE_string("refs", None, "Reference feature folder.", required=True)
_REF_LIST = flags.DEFINE_string("ref_list", None, "ImageList .npz with the reference labels.",
                                required=True)
_K = flags.DEFINE_integer("k", 5, "Reference neighbours that vote.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.0, "Confidence below which a query is "
                                "predicted non-landmark.")
_OUTPUT = flags.DEFINE_string("output", "recognition.csv", "Submission CSV to write.")
_SOLUTION = flags.DEFINE_string("solution", None, "Recognition solution CSV to score with GAP.")


def main(argv):
    del argv
    from lmr_jax.data.lists import ImageList
    from lmr_jax.retrieval import features, metrics, recognition, submission

    queries = features.load_features(_QUERIES.value)
    refs = features.load_features(_REFS.value)
    ref_list = ImageList.load(_REF_LIST.value)
    labels = ref_list.labels[features.positions_of(refs.ids, ref_list.ids, "reference ids")]
    pred, conf = recognition.recognize(queries.feats, refs.feats, labels, k=_K.value,
                                       threshold=_THRESHOLD.value)
    submission.write_recognition_submission(
        _OUTPUT.value, [(q, None if p < 0 else int(p), float(c))
                        for q, p, c in zip(queries.ids, pred, conf, strict=True)])
    result = {"output": _OUTPUT.value, "num_queries": len(queries),
              "num_predicted_landmarks": int((pred >= 0).sum())}
    if _SOLUTION.value:
        sol = submission.read_recognition_solution(_SOLUTION.value)
        preds = submission.read_recognition_submission(_OUTPUT.value)
        preds = {k: v for k, v in preds.items() if k in sol}
        result["gap"] = metrics.global_average_precision(preds, sol)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
