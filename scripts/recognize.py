"""Landmark recognition (GLDv2 2019 task): similarity-weighted voting over reference neighbours,
a softmax landmark classifier, or both combined.

  python scripts/recognize.py --queries features/test --refs features/refs \
      --ref_list data/gldv2_prepared/lists/all.npz --output recognition.csv \
      --solution /data/gldv2/test/recognition_solution_v2.1.csv

--queries / --refs are folders written by scripts/extract.py; the reference labels come from
the ImageList of the reference images (matched by id) and are written as GLDv2 landmark ids
through the label table saved beside the prepared lists (``lists/labels.csv``; --labels names
another one). Writes a Kaggle ``id,landmarks`` CSV (``"<landmark_id> <confidence>"``, empty for
a non-landmark prediction); with --solution (``id,landmarks,Usage``) the JSON printed on the last
line holds the GAP of the written file for all scored queries, Public and Private.

With --classifier (a softmax classifier checkpoint, e.g. Baidu's res152_softmax_v2 converted
with scripts/convert_weights.py) the query images (--query_list, --query_images) are classified
with Baidu's classification preprocessing; its class indices become landmark ids through
--classifier_labels (default: the same label table as the kNN labels, which fits a classifier
trained on the prepared lists). Alone (no --queries) the classifier's top class and probability
are the prediction; with --queries the two are combined by the rule of
``lmr_jax.retrieval.recognition.combine_with_classifier`` (agreement: confidences added;
disagreement: the more confident one).
"""

import json

import numpy as np
from absl import app, flags

_QUERIES = flags.DEFINE_string("queries", None, "Query feature folder (kNN voting).")
_REFS = flags.DEFINE_string("refs", None, "Reference feature folder (with --queries).")
_REF_LIST = flags.DEFINE_string("ref_list", None, "ImageList .npz with the reference labels "
                                "(with --queries).")
_LABELS = flags.DEFINE_string("labels", None, "Label table (label,landmark_id,country); "
                              "default labels.csv beside --ref_list.")
_K = flags.DEFINE_integer("k", 5, "Reference neighbours that vote.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.0, "Confidence below which a query is "
                                "predicted non-landmark.")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "Softmax classifier model checkpoint "
                                  "(heads baidu_softmax_v1 / baidu_softmax_v2).")
_CLASSIFIER_LABELS = flags.DEFINE_string(
    "classifier_labels", None, "Label table of the classifier's classes; default --labels "
    "(or labels.csv beside --ref_list).")
_QUERY_LIST = flags.DEFINE_string("query_list", None, "ImageList .npz of the query images "
                                  "(with --classifier).")
_QUERY_IMAGES = flags.DEFINE_string("query_images", None, "Prepared store or image root of "
                                    "--query_list (omit when it has absolute paths).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Classifier images per forward pass.")
_OUTPUT = flags.DEFINE_string("output", "recognition.csv", "Submission CSV to write.")
_SOLUTION = flags.DEFINE_string("solution", None, "Recognition solution CSV to score with GAP.")


def _table(path):
    from lmr_jax.data.lists import LabelTable, LabelTableError

    try:
        if path:
            return LabelTable.load(path)
        if not _REF_LIST.value:
            raise app.UsageError("give --labels or --classifier_labels (the label table)")
        return LabelTable.beside(_REF_LIST.value)
    except LabelTableError as e:
        raise app.UsageError(str(e)) from None


def knn_predictions():
    """(query ids, landmark ids (-1: none), confidences) of the kNN vote."""
    from lmr_jax.data.lists import ImageList
    from lmr_jax.retrieval import features, recognition

    if not (_REFS.value and _REF_LIST.value):
        raise app.UsageError("--queries needs --refs and --ref_list")
    table = _table(_LABELS.value)
    queries = features.load_features(_QUERIES.value)
    refs = features.load_features(_REFS.value)
    ref_list = ImageList.load(_REF_LIST.value)
    labels = ref_list.labels[features.positions_of(refs.ids, ref_list.ids, "reference ids")]
    pred, conf = recognition.recognize(queries.feats, refs.feats, labels, k=_K.value)
    return np.asarray(queries.ids), table.landmark_of(pred), conf


def classifier_predictions():
    """(query ids, landmark ids, probabilities) of the classifier's top class."""
    from lmr_jax.data import store
    from lmr_jax.data.lists import ImageList
    from lmr_jax.models.saved_model import ModelCheckpointError, load_model
    from lmr_jax.retrieval import recognition

    if not _QUERY_LIST.value:
        raise app.UsageError("--classifier needs --query_list (and --query_images unless the "
                             "list has absolute paths)")
    try:
        model, _, meta = load_model(_CLASSIFIER.value)
    except ModelCheckpointError as e:
        raise app.UsageError(str(e)) from None
    if not hasattr(model, "probabilities"):
        raise app.UsageError(f"{_CLASSIFIER.value}: head {meta['model_kwargs'].get('head')!r} "
                             "is not a softmax classifier")
    table = _table(_CLASSIFIER_LABELS.value or _LABELS.value)
    if len(table) != model.num_classes:
        raise app.UsageError(f"the classifier has {model.num_classes} classes, its label table "
                             f"{len(table)} (give --classifier_labels)")
    query_list = ImageList.load(_QUERY_LIST.value)
    source = store.open_source(query_list, _QUERY_IMAGES.value)
    classes, probs = recognition.classify_images(model, source, batch_size=_BATCH.value)
    return np.asarray(query_list.ids), table.landmark_of(classes), probs


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lmr_jax.retrieval import features, recognition, submission

    if not (_QUERIES.value or _CLASSIFIER.value):
        raise app.UsageError("give --queries (kNN voting), --classifier, or both")
    result = {}
    if _QUERIES.value:
        ids, landmark, conf = knn_predictions()
    if _CLASSIFIER.value:
        cls_ids, cls_landmark, cls_conf = classifier_predictions()
        if _QUERIES.value:
            order = features.positions_of(ids, cls_ids, "query ids (--query_list)")
            landmark, conf = recognition.combine_with_classifier(
                landmark, conf, cls_landmark[order], cls_conf[order])
            result["method"] = "knn+classifier"
        else:
            ids, landmark, conf = cls_ids, cls_landmark, cls_conf
            result["method"] = "classifier"
    else:
        result["method"] = "knn"
    landmark = np.where(conf < _THRESHOLD.value, -1, landmark)
    submission.write_recognition_submission(
        _OUTPUT.value, [(q, None if lid < 0 else int(lid), float(c))
                        for q, lid, c in zip(ids, landmark, conf, strict=True)])
    result.update({"output": _OUTPUT.value, "num_queries": len(ids),
                   "num_predicted_landmarks": int((landmark >= 0).sum())})
    if _SOLUTION.value:
        try:
            result.update(submission.score_recognition_submission(_OUTPUT.value,
                                                                  _SOLUTION.value))
        except submission.SubmissionError as e:
            raise app.UsageError(str(e)) from None
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
