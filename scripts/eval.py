"""Offline retrieval evaluation.

Two modes:
  python scripts/eval.py --submission S.csv --solution retrieval_solution_v2.1.csv
      scores a ready Kaggle submission; the last line printed is one JSON object with
      "map@100" (all scored queries), "map@100_public" and "map@100_private".
  python scripts/eval.py --config configs/eval/gldv2_val.py [--config.workdir=...]
      features -> every configured re-ranking (one model or an ensemble) -> submission.csv ->
      metrics -> report + picture (see lmr_jax.retrieval.offline_evaluation); the outputs go
      to --config.workdir, by default runs/eval/<config file name> (printed at start).
  python scripts/eval.py --revisited_gnd gnd_roxford5k.pkl --revisited_queries FEATS_Q \
      --revisited_db FEATS_DB
      Revisited Oxford/Paris mAP (Easy/Medium/Hard) of features from scripts/extract.py (ids
      = image names without extension, matched to the ground truth's qimlist / imlist).
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config file.")
_SUBMISSION = flags.DEFINE_string("submission", None, "Kaggle retrieval submission (id,images).")
_SOLUTION = flags.DEFINE_string("solution", None, "Retrieval solution (id,images,Usage).")
_RGND = flags.DEFINE_string("revisited_gnd", None, "Revisited Oxford/Paris gnd_*.pkl.")
_RQ = flags.DEFINE_string("revisited_queries", None, "Feature folder of the query images.")
_RDB = flags.DEFINE_string("revisited_db", None, "Feature folder of the database images.")


def main(argv):
    del argv
    if _SUBMISSION.value or _SOLUTION.value:
        if not (_SUBMISSION.value and _SOLUTION.value):
            sys.exit("--submission and --solution go together")
        from lmr_jax.retrieval.submission import SubmissionError, score_retrieval_submission

        try:
            result = score_retrieval_submission(_SUBMISSION.value, _SOLUTION.value)
        except SubmissionError as e:
            sys.exit(f"error: {e}")
    elif _RGND.value:
        if not (_RQ.value and _RDB.value):
            sys.exit("--revisited_gnd needs --revisited_queries and --revisited_db")
        from lmr_jax.retrieval import features, metrics
        from lmr_jax.retrieval.submission import read_revisited_gnd

        gnd = read_revisited_gnd(_RGND.value)
        q = features.load_features(_RQ.value)
        db = features.load_features(_RDB.value)
        try:
            qf = q.feats[features.positions_of(gnd["qimlist"], q.ids, "query images")]
            dbf = db.feats[features.positions_of(gnd["imlist"], db.ids, "database images")]
        except features.FeatureStoreError as e:
            sys.exit(f"error: {e}")
        result = metrics.revisited_from_features(qf, dbf, gnd["gnd"])
    elif _CONFIG.value is not None:
        from lmr_jax.retrieval.offline_evaluation import run_evaluation

        config = _CONFIG.value
        if not config.workdir:
            path = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")[0]
            name = os.path.splitext(os.path.basename(path))[0]
            config.workdir = os.path.join("runs", "eval", name)
        print(f"evaluation outputs: {os.path.abspath(config.workdir)}", flush=True)
        result = run_evaluation(config)
    else:
        sys.exit("give --config, or --submission with --solution")
    logging.info("done")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
