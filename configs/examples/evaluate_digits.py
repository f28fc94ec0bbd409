"""A pipeline's evaluation step: train the sweep's best point again, longer, measure it on a test
set no point of the sweep saw, and log the model where a register step finds it.

The point comes from the pipeline (`inputs: {candidate: train.best}`) as JSON in
HPCOPS_INPUT_CANDIDATE_PARAMS (hpcops/engine/pipeline_env.py); run on its own, the spec's
HPCOPS_PARAM_<NAME> stand in. `epochs` is always this step's own param. It logs `accuracy` (on
a validation split, per epoch, as train_digits.py does) and `test_accuracy` (once, at the end,
on a test split fixed whatever the seed, so that every firing's model is judged on the same
digits: what a register step's `if_better` compares).

The model is saved as an MLflow model (`mlflow.sklearn.save_model`) and logged into the run's
artifacts under `model/` with `log_artifacts`: that works in relay mode too, where the job has no
network and hpcops copies the run's artifacts to the server (docs/notes-stack.md, "Where a
model's files are"), and it is where the register step looks (`model/MLmodel`).
"""

import json
import os
import tempfile
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import sklearn
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

TEST_SPLIT_SEED = 0  # the test digits never change: versions are compared on the same ones


def candidate() -> dict[str, object]:
    """The sweep's best point, if the pipeline passed one."""
    text = os.environ.get("HPCOPS_INPUT_CANDIDATE_PARAMS")
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def param(name: str, default: str, point: dict[str, object]) -> str:
    if name in point:
        return str(point[name])
    return os.environ.get(f"HPCOPS_PARAM_{name.upper()}", default)


def main() -> None:
    point = candidate()
    lr = float(param("lr", "0.01", point))
    seed = int(param("seed", "0", point))
    alpha = float(param("alpha", "0.0001", point))
    epochs = int(param("epochs", "20", {}))  # this step's own, not the point's
    mlflow.log_params({"candidate.lr": lr, "candidate.seed": seed, "candidate.alpha": alpha})
    if point:
        mlflow.set_tag("candidate.params", json.dumps(point, sort_keys=True))

    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.2, random_state=TEST_SPLIT_SEED, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.25, random_state=seed, stratify=y_rest
    )
    scaler = StandardScaler().fit(x_train)
    model = SGDClassifier(
        loss="log_loss", learning_rate="constant", eta0=lr, alpha=alpha, random_state=seed
    )
    classes = np.unique(y)
    rng = np.random.default_rng(seed)
    scaled_train, scaled_val = scaler.transform(x_train), scaler.transform(x_val)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(scaled_train))
        model.partial_fit(scaled_train[order], y_train[order], classes=classes)
        val_acc = model.score(scaled_val, y_val)
        mlflow.log_metric("accuracy", val_acc, step=epoch)
        print(f"epoch {epoch}: validation accuracy {val_acc:.4f}")

    pipeline = make_pipeline(scaler, model)
    test_acc = pipeline.score(x_test, y_test)
    mlflow.log_metric("test_accuracy", test_acc)
    print(
        f"test accuracy {test_acc:.4f} (lr {lr:g}, seed {seed}, alpha {alpha:g}, {epochs} epochs)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "model"
        mlflow.sklearn.save_model(
            pipeline, str(saved), pip_requirements=[f"scikit-learn=={sklearn.__version__}"]
        )
        mlflow.log_artifacts(str(saved), "model")


if __name__ == "__main__":
    main()
