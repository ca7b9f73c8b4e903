#!/usr/bin/env python3
"""The Hugging Face hub's MMLU (cais/mmlu, parquet) in the original Hendrycks et al. layout that
`keel eval --bench mmlu --data DIR` reads:

    SRC/SUBJECT/{dev,validation,test}-00000-of-00001.parquet
        columns question (str), subject (str), choices (list of 4 str), answer (int 0..3)
 -> OUT/{dev,val,test}/SUBJECT_{dev,val,test}.csv
        no header, question,A,B,C,D,answer (a letter), RFC-4180 quoting (Python csv)

Rows keep the parquet order (dev in that order gives the harness's exemplars). The `all` and
`auxiliary_train` folders are skipped. Needs pandas and pyarrow (pip install pandas pyarrow).

    python3 scripts/mmlu_parquet_to_csv.py SRC OUT
    (SRC: a snapshot in the hub cache, or `hf download cais/mmlu --repo-type dataset --local-dir SRC`)
"""
import csv
import sys
from pathlib import Path

import pandas as pd

SPLITS = {"dev": "dev", "validation": "val", "test": "test"}


def main(src: Path, out: Path) -> None:
    subjects = 0
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and p.name not in ("all", "auxiliary_train")):
        found = False
        for hub_split, split in SPLITS.items():
            files = sorted(folder.glob(f"{hub_split}-*.parquet"))
            if not files:
                continue
            found = True
            frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
            (out / split).mkdir(parents=True, exist_ok=True)
            with open(out / split / f"{folder.name}_{split}.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f, lineterminator="\n")
                for row in frame.itertuples(index=False):
                    choices = list(row.choices)
                    if len(choices) != 4 or not 0 <= int(row.answer) < 4:
                        sys.exit(f"{folder.name}/{hub_split}: a row without 4 choices and an answer 0..3")
                    w.writerow([row.question, *choices, "ABCD"[int(row.answer)]])
        subjects += found
    if subjects == 0:
        sys.exit(f"{src} holds no SUBJECT/{{dev,validation,test}}-*.parquet files (cais/mmlu's layout)")
    print(f"{subjects} subjects written to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
