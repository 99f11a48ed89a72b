"""Export the trained parts of a checkpoint as a PEFT-compatible folder (see ``kava.checkpoint``).

python -m kava.export CHECKPOINT OUT_DIR
"""

from __future__ import annotations

import argparse

from kava.checkpoint import export_pretrained, load_module


def main() -> None:
    ap = argparse.ArgumentParser(description="Export a kava checkpoint as a PEFT-compatible folder")
    ap.add_argument("checkpoint")
    ap.add_argument("out_dir")
    args = ap.parse_args()
    path = export_pretrained(load_module(args.checkpoint), args.out_dir)
    print(f"exported to {path}")


if __name__ == "__main__":
    main()
