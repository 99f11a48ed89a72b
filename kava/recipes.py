"""Table 6 of the KaVa paper: per (backbone, data set) hyperparameters, selected with ``loss=table6``."""

from __future__ import annotations

from typing import Any

# (model, data) -> row. Values as transcribed in the reference notes (paper Table 6).
TABLE6: dict[tuple[str, str], dict[str, Any]] = {
    ("llama1b", "gsm8k_aug"): {
        "lr": 8e-4, "alpha1": 10.0, "alpha2": 1.0, "kv_loss": "smooth_l1", "layerwise_std": True,
        "use_projection": True, "rkv_lambda": 0.1, "epochs": 10, "weight_decay": 0.1,
    },
    ("llama1b", "gsm8k_aug_nl"): {
        "lr": 8e-4, "alpha1": 10.0, "alpha2": 1.0, "kv_loss": "mse", "layerwise_std": True,
        "use_projection": True, "rkv_lambda": 0.1, "epochs": 10, "weight_decay": 0.1,
    },
    ("qwen05b", "gsm8k_aug"): {
        "lr": 5e-4, "alpha1": 10.0, "alpha2": 1.0, "kv_loss": "mse", "layerwise_std": False,
        "use_projection": True, "rkv_lambda": 0.1, "epochs": 10, "weight_decay": 0.01,
    },
    ("qwen05b", "gsm8k_aug_nl"): {
        "lr": 8e-4, "alpha1": 10.0, "alpha2": 1.0, "kv_loss": "mse", "layerwise_std": True,
        "use_projection": True, "rkv_lambda": 0.1, "epochs": 10, "weight_decay": 0.1,
    },
    ("llama3b", "gsm8k_aug"): {
        "lr": 2e-4, "alpha1": 20.0, "alpha2": 2.0, "kv_loss": "smooth_l1", "layerwise_std": False,
        "use_projection": True, "rkv_lambda": 0.1, "epochs": 5, "weight_decay": 0.1,
    },
    ("llama3b", "gsm8k_aug_nl"): {
        "lr": 2e-4, "alpha1": 20.0, "alpha2": 2.0, "kv_loss": "smooth_l1", "layerwise_std": False,
        "use_projection": False, "rkv_lambda": 0.0, "epochs": 5, "weight_decay": 0.1,
    },
}  # fmt: skip


def table6(model: str, data: str, key: str) -> Any:
    """One value of the Table 6 row of ``(model, data)``; an unknown pair lists the rows that exist."""
    row = TABLE6.get((str(model), str(data)))
    if row is None:
        rows = ", ".join(f"model={m} data={d}" for m, d in TABLE6)
        raise ValueError(
            f"loss=table6 has no row for model={model} data={data}. Rows: {rows}. "
            "Pick one of these pairs or use loss=kava with explicit settings."
        )
    if key not in row:
        raise KeyError(f"Table 6 has no column '{key}'; columns: {', '.join(row)}")
    return row[key]
