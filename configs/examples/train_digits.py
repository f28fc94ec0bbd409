"""A small, real training job that records itself in MLflow: a linear classifier on the
handwritten digits that ship with scikit-learn (no download), trained epoch by epoch.

hpcops passes the spec's params as HPCOPS_PARAM_<NAME> and the MLflow run as MLFLOW_TRACKING_URI,
MLFLOW_RUN_ID and MLFLOW_EXPERIMENT_ID, so plain `mlflow.log_metric(...)` lands in the run hpcops
created, whether the job reaches the tracking server or logs into a relay store on scratch.
Deterministic for a given seed: `hpcops rerun` reproduces the same accuracy.
"""

import os
import pickle
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler


def param(name: str, default: str) -> str:
    return os.environ.get(f"HPCOPS_PARAM_{name.upper()}", default)


def main() -> None:
    lr = float(param("lr", "0.01"))
    epochs = int(param("epochs", "20"))
    seed = int(param("seed", "0"))
    alpha = float(param("alpha", "0.0001"))

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    model = SGDClassifier(
        loss="log_loss", learning_rate="constant", eta0=lr, alpha=alpha, random_state=seed
    )
    classes = np.unique(y)
    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        model.partial_fit(x_train[order], y_train[order], classes=classes)
        train_acc = model.score(x_train, y_train)
        test_acc = model.score(x_test, y_test)
        mlflow.log_metrics({"train_accuracy": train_acc, "accuracy": test_acc}, step=epoch)
        print(f"epoch {epoch}: train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f}")
    print(f"test accuracy {test_acc:.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pkl"
        path.write_bytes(pickle.dumps({"scaler": scaler, "model": model}))
        mlflow.log_artifact(str(path), "model")


if __name__ == "__main__":
    main()
