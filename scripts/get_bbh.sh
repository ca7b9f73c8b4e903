#!/usr/bin/env bash
# BBH (BIG-Bench Hard) prompt parts for `keel eval --bench bbh_zeroshot | bbh_fewshot |
# bbh_cot_fewshot`, from lm-evaluation-harness's PyPI wheel (lm_eval/tasks/bbh/*/{task}.yaml, MIT):
#
#   OUT/prompts/{task}.json   per subtask: the description of each variant and the 3 fixed
#                             (first_n) exemplars of the few-shot variants (see scripts/bbh_prompts.py)
#
# keel's repository holds only the rules (task names, stop strings, filters, normalisation); the
# descriptions and exemplars are lm-eval's text and live with the data.
#
# The test items are not on PyPI. Put them in the same OUT folder, either
#   - the hub dataset lm-eval reads (dataset_path SaylorTwift/bbh):
#       hf download SaylorTwift/bbh --repo-type dataset --local-dir OUT
#     (OUT/{task}/test-00000-of-00001.parquet; the refs/convert/parquet layout
#      OUT/{task}/test/0000.parquet is read too), or
#   - the original release (github.com/suzgun/BIG-Bench-Hard, folder bbh/):
#       OUT/bbh/{task}.json  or  OUT/{task}.json   ({"examples": [{"input", "target"}, ...]})
#
#   scripts/get_bbh.sh [OUT] [LM_EVAL_VERSION]   (OUT defaults to data/bbh, git-ignored;
#                                                 the version to 0.4.13)
#
# Needs python3 with pip and network access to PyPI (wheels are downloaded, never installed).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-data/bbh}
version=${2:-0.4.13}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 -m pip download -q --no-deps --only-binary :all: -d "$tmp" "lm-eval==$version"
wheel=$(ls "$tmp"/lm_eval-"$version"-*.whl)

# PyYAML parses the task YAMLs (lm-eval itself depends on it); fetched beside the wheel if absent.
pypath=
if ! python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip download -q --no-deps --only-binary :all: -d "$tmp/yaml" pyyaml
    (cd "$tmp/yaml" && python3 -m zipfile -e [Pp]y[Yy][Aa][Mm][Ll]-*.whl .)
    pypath=$tmp/yaml
fi

PYTHONPATH=$pypath python3 scripts/bbh_prompts.py "$wheel" "$out/prompts"
