"""``loss=table6``: the rows of the KaVa paper's Table 6 live in ``conf/recipe/table6/<model>_<data>.yaml``."""

from __future__ import annotations

from kava.paths import CONF_DIR

TABLE6_DIR = CONF_DIR / "recipe" / "table6"


def table6_rows() -> list[str]:
    """``model=<m> data=<d>`` for every row of Table 6 that ships."""
    pairs = (p.stem.split("_", 1) for p in sorted(TABLE6_DIR.glob("*.yaml")))  # model names have no "_"
    return [f"model={model} data={data}" for model, data in pairs]


def no_table6_row(model: str, data: str) -> None:
    """Resolved only when no row file overrode ``loss.alpha1``: the pair has no row."""
    raise ValueError(
        f"loss=table6 has no row for model={model} data={data}. Rows: {', '.join(table6_rows())}. "
        "Pick one of these pairs or use loss=kava with explicit settings."
    )
