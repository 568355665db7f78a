"""Landmark recognition (GLDv2 2019 task) by similarity-weighted voting over reference neighbours.

  python scripts/recognize.py --queries features/test --refs features/refs \
      --ref_list data/gldv2_prepared/lists/all.npz --output recognition.csv \
      --solution /data/gldv2/test/recognition_solution_v2.1.csv

--queries / --refs are folders written by scripts/extract.py; the reference labels come from
the ImageList of the reference images (matched by id) and are written as GLDv2 landmark ids
through the label table saved beside the prepared lists (``lists/labels.csv``; --labels names
another one). Writes a Kaggle ``id,landmarks`` CSV (``"<landmark_id> <confidence>"``, empty for
a non-landmark prediction); with --solution (``id,landmarks,Usage``) the JSON printed on the last
line holds the GAP of the written file for all scored queries, Public and Private.
"""

import json

from absl import app, flags

_QUERIES = flags.DEFINE_string("queries", None, "Query feature folder.", required=True)
_REFS = flags.DEFINE_string("refs", None, "Reference feature folder.", required=True)
_REF_LIST = flags.DEFINE_string("ref_list", None, "ImageList .npz with the reference labels.",
                                required=True)
_LABELS = flags.DEFINE_string("labels", None, "Label table (label,landmark_id,country); "
                              "default labels.csv beside --ref_list.")
_K = flags.DEFINE_integer("k", 5, "Reference neighbours that vote.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.0, "Confidence below which a query is "
                                "predicted non-landmark.")
_OUTPUT = flags.DEFINE_string("output", "recognition.csv", "Submission CSV to write.")
_SOLUTION = flags.DEFINE_string("solution", None, "Recognition solution CSV to score with GAP.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lmr_jax.data.lists import ImageList, LabelTable, LabelTableError
    from lmr_jax.retrieval import features, recognition, submission

    try:
        table = (LabelTable.load(_LABELS.value) if _LABELS.value
                 else LabelTable.beside(_REF_LIST.value))
    except LabelTableError as e:
        raise app.UsageError(str(e)) from None
    queries = features.load_features(_QUERIES.value)
    refs = features.load_features(_REFS.value)
    ref_list = ImageList.load(_REF_LIST.value)
    labels = ref_list.labels[features.positions_of(refs.ids, ref_list.ids, "reference ids")]
    pred, conf = recognition.recognize(queries.feats, refs.feats, labels, k=_K.value,
                                       threshold=_THRESHOLD.value)
    landmark = table.landmark_of(pred)
    submission.write_recognition_submission(
        _OUTPUT.value, [(q, None if p < 0 else int(lid), float(c))
                        for q, p, lid, c in zip(queries.ids, pred, landmark, conf, strict=True)])
    result = {"output": _OUTPUT.value, "num_queries": len(queries),
              "num_predicted_landmarks": int((pred >= 0).sum())}
    if _SOLUTION.value:
        try:
            result.update(submission.score_recognition_submission(_OUTPUT.value,
                                                                  _SOLUTION.value))
        except submission.SubmissionError as e:
            raise app.UsageError(str(e)) from None
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
