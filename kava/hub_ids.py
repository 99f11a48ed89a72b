"""Hugging Face Hub ids of the data sets the configs name (import-light, shared by loaders and preflight)."""

EVAL_HUB_IDS: dict[str, str] = {
    "gsm8k": "openai/gsm8k",
    "gsm_hard": "reasoning-machines/gsm-hard",
    "svamp": "ChilleD/SVAMP",
    "multiarith": "ChilleD/MultiArith",
    "gsm8k_aug_val": "whynlp/gsm8k-aug",
}
