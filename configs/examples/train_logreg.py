"""A small, real training job: logistic regression by gradient descent on a synthetic, seeded data
set, in plain Python so it runs on any compute node. hpcops passes the spec's params as
HPCOPS_PARAM_<NAME> environment variables."""

import math
import os
import random


def param(name: str, default: str) -> str:
    return os.environ.get(f"HPCOPS_PARAM_{name.upper()}", default)


def make_data(n: int, seed: int) -> list[tuple[list[float], int]]:
    rng = random.Random(seed)  # noqa: S311 (a seeded data set, not a secret)
    true_w = [1.5, -2.0, 0.7]
    data = []
    for _ in range(n):
        x = [rng.gauss(0, 1) for _ in true_w]
        z = sum(w * xi for w, xi in zip(true_w, x, strict=True)) + rng.gauss(0, 0.5)
        data.append((x, 1 if z > 0 else 0))
    return data


def main() -> None:
    lr = float(param("lr", "0.1"))
    epochs = int(param("epochs", "20"))
    seed = int(param("seed", "0"))
    data = make_data(40000, seed)
    train, test = data[:30000], data[30000:]
    w = [0.0, 0.0, 0.0]
    b = 0.0
    for epoch in range(1, epochs + 1):
        loss = 0.0
        for x, y in train:
            p = 1 / (1 + math.exp(-(sum(wi * xi for wi, xi in zip(w, x, strict=True)) + b)))
            loss -= math.log(p if y else 1 - p + 1e-12)
            g = p - y
            w = [wi - lr * g * xi for wi, xi in zip(w, x, strict=True)]
            b -= lr * g
        if epoch % 10 == 0 or epoch == epochs:
            print(f"epoch {epoch}: train loss {loss / len(train):.4f}", flush=True)
    correct = sum(
        (sum(wi * xi for wi, xi in zip(w, x, strict=True)) + b > 0) == bool(y) for x, y in test
    )
    print(f"test accuracy {correct / len(test):.4f}")


if __name__ == "__main__":
    main()
