#!/usr/bin/env python3
"""Prints transformers' logits for the exports written by tests/export.rs's
`write_reference_exports`, as the `REFERENCE` table that `exported_logits_equal_transformers`
checks keel against (CI has no PyTorch, so the values are pasted):

    KEEL_REFERENCE_OUT=/tmp/keel-ref cargo test --release --test export write_reference_exports -- --ignored --exact
    python scripts/hf_export_reference.py /tmp/keel-ref

DIR holds one exported folder per case and tokens.json (the fixed tokens). Each folder is loaded
with AutoModelForCausalLM (trust_remote_code=True) with eager and with sdpa attention; the two
must agree within 1e-4 (the test's tolerance). Printed: the logits at positions 0 and 11 for the ids in IDS.
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

IDS = [0, 7, 42, 97, 128, 255]
CASES = ["keel", "keel_v1", "post_ln", "deepnorm", "mix_ln", "hybrid_norm", "pre_ln_layer_norm_tied",
         "pre_ln_gelu_no_final_norm"]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    with open(os.path.join(root, "tokens.json")) as f:
        tokens = torch.tensor([json.load(f)])
    print(f"// transformers {transformers.__version__}, torch {torch.__version__}")
    for case in CASES:
        logits = {}
        for impl in ("eager", "sdpa"):
            model = AutoModelForCausalLM.from_pretrained(
                os.path.join(root, case), trust_remote_code=True, attn_implementation=impl
            )
            assert type(model).__name__ == "KeelForCausalLM", type(model).__name__
            with torch.no_grad():
                logits[impl] = model(tokens).logits[0]
        d = float((logits["eager"] - logits["sdpa"]).abs().max())
        assert d < 1e-4, f"{case}: eager and sdpa differ by {d}"
        rows = [", ".join(format(float(logits['eager'][pos, i]), '.8g') for i in IDS) for pos in (0, tokens.shape[1] - 1)]
        print(f'    ("{case}", [[{rows[0]}], [{rows[1]}]]),')


if __name__ == "__main__":
    main()
