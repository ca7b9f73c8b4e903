#!/usr/bin/env python3
"""Writes BBH's per-subtask prompt parts from an lm-evaluation-harness wheel, for `keel eval --bench
bbh_zeroshot / bbh_fewshot / bbh_cot_fewshot` (called by scripts/get_bbh.sh).

    bbh_prompts.py WHEEL OUT_DIR

For each of the 27 subtasks it reads lm_eval/tasks/bbh/{zeroshot,fewshot,cot_fewshot}/{task}.yaml
and writes OUT_DIR/{task}.json:

    {"source": "lm-eval X: lm_eval/tasks/bbh/...",
     "zeroshot":    {"description": "..."},
     "fewshot":     {"description": "...", "samples": [{"input": "...", "target": "..."}, ...]},
     "cot_fewshot": {"description": "...", "samples": [...]}}

Descriptions and samples are the YAML values after YAML parsing (folding applied); targets are
rendered as Jinja's "{{target}}" renders them (str()). keel itself holds the rules (stop strings,
filters, normalisation); it checks here that every doc_to_text is the one those rules assume, so a
changed lm-eval fails loudly instead of prompting differently.
"""
import json
import os
import re
import sys
import zipfile

TASKS = """boolean_expressions causal_judgement date_understanding disambiguation_qa dyck_languages
formal_fallacies geometric_shapes hyperbaton logical_deduction_five_objects
logical_deduction_seven_objects logical_deduction_three_objects movie_recommendation
multistep_arithmetic_two navigate object_counting penguins_in_a_table
reasoning_about_colored_objects ruin_names salient_translation_error_detection snarks
sports_understanding temporal_sequences tracking_shuffled_objects_five_objects
tracking_shuffled_objects_seven_objects tracking_shuffled_objects_three_objects web_of_lies
word_sorting""".split()
assert len(TASKS) == 27

# What keel's prompt builder assumes (src/eval/bbh.rs): doc_to_text per variant.
DOC_TO_TEXT = {
    "zeroshot": "Q: {{input}}\nA:",
    "fewshot": "Q: {{input}}\nA:",
    "cot_fewshot": "Q: {{input}}\nA: Let's think step by step.\n",
}


def load_yaml_module():
    try:
        import yaml  # noqa: F401

        return yaml
    except ImportError:
        sys.exit("bbh_prompts.py needs PyYAML (get_bbh.sh fetches it when python3 lacks it)")


def render(v):
    """Jinja's rendering of a scalar ({{target}}): str(), which YAML ints and bools also go through."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool) or isinstance(v, (int, float)):
        return str(v)
    sys.exit(f"unexpected exemplar value {v!r}")


def main():
    wheel, out = sys.argv[1], sys.argv[2]
    yaml = load_yaml_module()

    class Loader(yaml.SafeLoader):
        pass

    # The zero-shot YAMLs name utils.py classes with `!function`; keep the name as text.
    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))

    version = re.search(r"lm_eval-([^-]+)-", os.path.basename(wheel))
    version = version.group(1) if version else "?"
    os.makedirs(out, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for task in TASKS:
            entry = {"source": f"lm-eval {version}: lm_eval/tasks/bbh/{{zeroshot,fewshot,cot_fewshot}}/{task}.yaml"}
            for variant in ("zeroshot", "fewshot", "cot_fewshot"):
                path = f"lm_eval/tasks/bbh/{variant}/{task}.yaml"
                cfg = yaml.load(z.read(path).decode("utf-8"), Loader=Loader)
                if cfg.get("doc_to_text") != DOC_TO_TEXT[variant]:
                    sys.exit(f"{path}: doc_to_text {cfg.get('doc_to_text')!r}, keel expects {DOC_TO_TEXT[variant]!r}")
                part = {"description": cfg["description"]}
                if variant != "zeroshot":
                    fs = cfg["fewshot_config"]
                    if fs.get("sampler") != "first_n":
                        sys.exit(f"{path}: sampler {fs.get('sampler')!r}, keel expects first_n")
                    part["samples"] = [
                        {"input": render(s["input"]), "target": render(s["target"])} for s in fs["samples"]
                    ]
                entry[variant] = part
            with open(os.path.join(out, f"{task}.json"), "w", encoding="utf-8") as f:
                json.dump(entry, f, ensure_ascii=False, indent=1)
                f.write("\n")
    print(f"wrote {len(TASKS)} prompt files to {out} (from lm-eval {version})")


if __name__ == "__main__":
    main()
