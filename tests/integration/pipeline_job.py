"""The job the pipeline cluster tests run, one mode per step (its first argument):

    prepare   writes a file into its run directory, for the steps after it
    train     a sweep's point: logs `accuracy`, best at lr=0.1 and seed=1
    evaluate  writes the candidate it was given (HPCOPS_INPUT_CANDIDATE_PARAMS) into its run
              directory, logs `test_accuracy` = its `quality` param, and saves a small
              scikit-learn model as an MLflow model under the run's artifacts at `model/`
    fail      exits 3

It logs through MLflow's plain API: the daemon gives the job MLFLOW_TRACKING_URI and
MLFLOW_RUN_ID, so the values land in the run hpcops made.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def _param(name: str, default: str) -> str:
    return os.environ.get(f"HPCOPS_PARAM_{name.upper()}", default)


def main() -> int:
    mode = sys.argv[1]
    run_dir = Path(os.environ["HPCOPS_RUN_DIR"])
    if mode == "fail":
        return 3
    if mode == "prepare":
        (run_dir / "prepared.txt").write_text("ready\n")
        return 0
    import mlflow

    if mode == "train":
        lr, seed = float(_param("lr", "0.01")), int(_param("seed", "1"))
        mlflow.log_metric("accuracy", round(1 - abs(lr - 0.1) - 0.01 * seed, 4))
        return 0
    if mode == "evaluate":
        candidate = os.environ.get("HPCOPS_INPUT_CANDIDATE_PARAMS", "null")
        (run_dir / "candidate.json").write_text(candidate)
        mlflow.log_metric("test_accuracy", float(_param("quality", "0.5")))
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.sklearn.save_model(model, f"{tmp}/model")
            mlflow.log_artifacts(f"{tmp}/model", "model")
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main())
