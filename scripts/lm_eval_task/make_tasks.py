#!/usr/bin/env python3
"""Writes lm-evaluation-harness tasks that score keel's MMLU folder the way the harness's own
default `mmlu` task scores cais/mmlu.

    python3 scripts/lm_eval_task/make_tasks.py --data data/mmlu --out runs/lm_eval_tasks

reads DATA/test/{subject}_test.csv (no header, question,A,B,C,D,answer; RFC-4180, read with
Python's csv module as keel's Rust csv reader reads it) and writes into OUT:

    jsonl/{subject}_test.jsonl     cais/mmlu's fields: question, subject, choices, answer (0-3),
                                   rows in file order (so the harness's doc_id = keel's row)
    _keel_mmlu_template_yaml       copied from this folder (the prompt)
    keel_mmlu_{subject}.yaml       one task per subject, data_files pointing at the jsonl by
                                   absolute path
    _keel_mmlu.yaml                the group `keel_mmlu`: accuracy micro-averaged over questions

Run the harness with `--include_path OUT --tasks keel_mmlu --num_fewshot 0`. Task names carry a
`keel_` prefix so they never clash with the harness's built-in `mmlu_*` tasks.
"""
import argparse
import csv
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = "_keel_mmlu_template_yaml"
LETTERS = "ABCD"


def yaml_str(s):
    # JSON strings are valid YAML double-quoted scalars.
    return json.dumps(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/mmlu", help="MMLU folder holding test/{subject}_test.csv")
    ap.add_argument("--out", required=True, help="folder for the task yamls and jsonl files")
    args = ap.parse_args()

    test_dir = os.path.join(args.data, "test")
    subjects = sorted(f[: -len("_test.csv")] for f in os.listdir(test_dir) if f.endswith("_test.csv"))
    if not subjects:
        sys.exit(f"no *_test.csv in {test_dir}: run scripts/get_mmlu.sh first")

    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "jsonl"), exist_ok=True)
    shutil.copy(os.path.join(HERE, TEMPLATE), os.path.join(out, TEMPLATE))
    total = 0
    for subject in subjects:
        src = os.path.join(test_dir, f"{subject}_test.csv")
        dst = os.path.join(out, "jsonl", f"{subject}_test.jsonl")
        with open(src, encoding="utf-8", newline="") as f, open(dst, "w", encoding="utf-8") as g:
            for n, row in enumerate(csv.reader(f), 1):
                if len(row) != 6 or row[5].strip() not in LETTERS:
                    sys.exit(f"{src}, row {n}: expected question,A,B,C,D,answer with answer A-D")
                doc = {"question": row[0], "subject": subject, "choices": row[1:5],
                       "answer": LETTERS.index(row[5].strip())}
                g.write(json.dumps(doc, ensure_ascii=False) + "\n")
                total += 1
        with open(os.path.join(out, f"keel_mmlu_{subject}.yaml"), "w", encoding="utf-8") as y:
            y.write(f'include: {TEMPLATE}\n')
            y.write(f'task: keel_mmlu_{subject}\n')
            y.write(f'task_alias: {subject}\n')
            y.write('dataset_kwargs:\n  data_files:\n')
            y.write(f'    test: {yaml_str(dst)}\n')
            desc = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
            y.write(f'description: {yaml_str(desc)}\n')
    with open(os.path.join(out, "_keel_mmlu.yaml"), "w", encoding="utf-8") as y:
        y.write("group: keel_mmlu\ntask:\n")
        for subject in subjects:
            y.write(f"  - keel_mmlu_{subject}\n")
        y.write("aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\nmetadata:\n  version: 1\n")
    print(f"{len(subjects)} subject tasks, {total} questions -> {out} (group keel_mmlu)")


if __name__ == "__main__":
    main()
