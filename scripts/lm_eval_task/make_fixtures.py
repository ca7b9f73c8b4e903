#!/usr/bin/env python3
"""Writes small benchmark fixtures in the Hugging Face hub's layouts, and lm-evaluation-harness task
YAMLs that run the harness's own default tasks on them, for the keel-vs-lm-eval agreement check
(scripts/lm_eval_tasks_agreement.sh).

    python scripts/lm_eval_task/make_fixtures.py --kjv data/raw/kjv.txt --out data/agree-fixtures \
        [--n 300] [--seed 28] [--tasks-out DIR]

Every item is made here, deterministically (random.Random(seed) per task), from the King James
Bible (public domain; one verse per line, as scripts/get_data.sh writes data/raw/kjv.txt),
templated arithmetic (GSM8K, BBH), and a few Chinese words written here (CMMLU). The items are not
meant to be answerable: they only have to exercise each task's reading, prompt and scoring rules
(non-ASCII text, since acc_norm counts characters, not bytes; hellaswag's " [title]" and "[header]"
markers and double spaces; ARC's "1".."4" labels and 3 to 5 choices; MMLU-Pro's 3 to 10 options and
"N/A"; a few prompts longer than the model's context, so both sides truncate from the left). Nothing
written here is committed (data/ is git-ignored).

OUT gets (parquet written by pyarrow, snappy, as the hub's files are):

    gsm8k/main/{test,train}-00000-of-00001.parquet            openai/gsm8k: question, answer ("... #### N")
    hellaswag/data/{validation,train}-00000-of-00001.parquet  Rowan/hellaswag: ind, activity_label, ctx_a,
                                                              ctx_b, ctx, endings[4], source_id, split,
                                                              split_type, label ("0".."3")
    ai2_arc/ARC-{Easy,Challenge}/{test,train,validation}-00000-of-00001.parquet
                                                              allenai/ai2_arc: id, question,
                                                              choices {text[], label[]}, answerKey
    piqa/data/{validation,train}-00000-of-00001.parquet       baber/piqa: goal, sol1, sol2, label (int)
    winogrande/winogrande_xl/{validation,train}-00000-of-00001.parquet
                                                              allenai/winogrande: sentence, option1,
                                                              option2, answer ("1"/"2")
    mmlu_pro/data/{test,validation}-00000-of-00001.parquet    TIGER-Lab/MMLU-Pro: question_id, question,
                                                              options[3..10], answer, answer_index,
                                                              cot_content, category, src
    cmmlu/{dev,test}/{subject}.csv                            haonan-li/cmmlu's zip: ",Question,A,B,C,D,Answer"
    bbh/{subtask}/test-00000-of-00001.parquet                 SaylorTwift/bbh: input, target
    fixtures.json                                             what was written (counts, seed, subjects)

With --corpus-out FILE it writes only FILE: training text in the generative tasks' formats (GSM8K's
"Question: ...\nAnswer: ... #### N", gsm8k_cot's "Q: ...\nA: ... The answer is N.", BBH's "Q: ...\nA:
..."), fresh items and the GSM8K and BBH fixtures' test items with their answers (on purpose, so that
a model trained on it gets some right), for a model whose greedy answers end in the tasks' answer
patterns and stop strings.

With --tasks-out DIR (needs lm_eval importable, i.e. run with the venv's python), DIR gets one YAML
per task: `include:` the installed harness's own task YAML (absolute path) and override only the
task name (keel_ prefix), `dataset_path` (parquet or csv), `dataset_name: null` and
`dataset_kwargs.data_files` (each split the YAML names, by absolute path), plus the groups
keel_cmmlu, keel_bbh_zeroshot, keel_bbh_fewshot and keel_bbh_cot_fewshot with the harness groups'
aggregation. So the
prompts, filters and metrics are the harness's, read from its files.
"""
import argparse
import csv
import datetime
import json
import os
import random
import re
import sys

N_DEFAULT = 300
SEED_DEFAULT = 28
CMMLU_SUBJECTS = ["agronomy", "anatomy", "ancient_chinese"]
BBH_SUBTASKS = ["boolean_expressions", "object_counting", "word_sorting", "date_understanding"]
MMLU_PRO_CATEGORIES = ["biology", "business", "chemistry", "computer science", "economics", "engineering", "health",
                       "history", "law", "math", "other", "philosophy", "physics", "psychology"]

# Non-ASCII words and names mixed into some items: each has more UTF-8 bytes than characters.
ACCENTED = ["naïve", "café", "façade", "rôle", "fiancée", "coöperate", "élan", "Zoë", "Chloé", "Søren", "Łukasz",
            "Ångström", "crème brûlée", "señor", "jalapeño", "Müller", "Straße", "déjà vu", "smörgåsbord", "über"]


def pa_modules():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        sys.exit("make_fixtures.py needs pyarrow (pip install pyarrow pandas), e.g. run it with the lm-eval venv's python")
    return pa, pq


def write_parquet(path, rows, schema):
    pa, pq = pa_modules()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path)  # snappy, pyarrow's default, as the hub's files are
    return len(rows)


def read_verses(path):
    with open(path, encoding="utf-8") as f:
        verses = [line.strip() for line in f if line.strip()]
    if len(verses) < 1000:
        sys.exit(f"{path}: expected the King James Bible, one verse per line (scripts/get_data.sh --no-prepare)")
    return verses


def words_of(text):
    return re.findall(r"[A-Za-z]+", text)


def accent(text, rng):
    """Replaces one word of `text` with a non-ASCII word (or appends one)."""
    ws = text.split(" ")
    w = rng.choice(ACCENTED)
    if len(ws) > 3:
        ws[rng.randrange(1, len(ws) - 1)] = w
        return " ".join(ws)
    return f"{text} {w}"


def maybe_accent(text, rng, p=0.15):
    return accent(text, rng) if rng.random() < p else text


class Bible:
    def __init__(self, verses):
        self.verses = verses
        vocab = set()
        for v in verses[:5000]:
            vocab.update(w.lower() for w in words_of(v) if len(w) >= 4)
        self.vocab = sorted(vocab)
        names = set()
        for v in verses[:8000]:
            for w in re.findall(r"(?<=[a-z,;:] )[A-Z][a-z]{3,}", v):
                names.add(w)
        self.names = sorted(names - {"LORD", "Lord", "God", "Behold", "Then", "There", "Thou", "This", "That",
                                     "These", "When", "What", "Which", "Wherefore", "Now"})

    def verse(self, rng, min_words=8, max_words=60):
        while True:
            i = rng.randrange(len(self.verses) - 1)
            v = self.verses[i]
            if min_words <= len(v.split()) <= max_words:
                return i, v

    def tail(self, rng, k_min=4, k_max=12):
        _, v = self.verse(rng)
        ws = v.split()
        k = rng.randint(k_min, min(k_max, len(ws) - 1))
        return " ".join(ws[-k:])

    def passage(self, rng, n):
        i = rng.randrange(len(self.verses) - n)
        return " ".join(self.verses[i:i + n])


# ---------------------------------------------------------------------------------------- GSM8K

GSM_NAMES = ["Abraham", "Sarah", "Isaac", "Rebekah", "Jacob", "Rachel", "Leah", "Joseph", "Moses", "Aaron", "Miriam",
             "Ruth", "Boaz", "Naomi", "David", "Solomon", "Zoë", "José", "Chloé", "Søren", "Łukasz", "Renée"]
GSM_THINGS = ["sheep", "camels", "loaves", "fishes", "figs", "pomegranates", "shekels", "lambs", "jars of oil",
              "scrolls", "crème brûlées", "jalapeños"]


def fmt_num(n, rng, commas_p=0.5):
    return f"{n:,}" if n >= 1000 and rng.random() < commas_p else str(n)


def gsm_item(rng, bible, long_p=0.0):
    name = rng.choice(GSM_NAMES)
    other = rng.choice([n for n in GSM_NAMES if n != name])
    thing = rng.choice(GSM_THINGS)
    kind = rng.randrange(7)
    if kind == 0:
        a, b, c = rng.randint(20, 90), rng.randint(1, 19), rng.randint(1, 40)
        r1, r = a - b, a - b + c
        q = f"{name} had {a} {thing}. {name} gave {b} of them to {other} and then bought {c} more. How many {thing} does {name} have now?"
        ans = (f"After giving some away, {name} had {a} - {b} = <<{a}-{b}={r1}>>{r1} {thing}.\n"
               f"Then {name} had {r1} + {c} = <<{r1}+{c}={r}>>{r} {thing}.\n#### {r}")
    elif kind == 1:
        a, p = rng.randint(12, 900), rng.randint(2, 30)
        r = a * p
        q = f"{name} sells {fmt_num(a, rng)} {thing} for ${p} each. How much money does {name} make?"
        ans = f"{name} makes {a} * {p} = $<<{a}*{p}={r}>>{r}.\n#### {r}"
    elif kind == 2:
        k, each = rng.randint(2, 12), rng.randint(3, 60)
        tot = k * each
        q = f"{name} shares {fmt_num(tot, rng)} {thing} equally among {k} friends. How many {thing} does each friend get?"
        ans = f"Each friend gets {tot} / {k} = <<{tot}/{k}={each}>>{each} {thing}.\n#### {each}"
    elif kind == 3:
        _, v = bible.verse(rng, 8, 30)
        a, b = rng.randint(2, 15), rng.randint(2, 15)
        r = a + b
        q = f"\"{v}\" {name} read this verse {a} times on Monday and {b} times on Tuesday. How many times did {name} read it?"
        ans = f"{name} read it {a} + {b} = <<{a}+{b}={r}>>{r} times.\n#### {r}"
    elif kind == 4:
        a, b = rng.randint(1, 20), rng.randint(5, 40)
        r = a - b
        q = f"In the morning the temperature in {other}'s village was {a} degrees. By night it had dropped by {b} degrees. What was the temperature at night?"
        ans = f"The temperature at night was {a} - {b} = <<{a}-{b}={r}>>{r} degrees.\n#### {r}"
    elif kind == 5:
        a = rng.randint(1, 40) * 2 + 1
        r = a / 2
        q = f"{name} and {other} split {a} dollars' worth of {thing} evenly. How many dollars' worth does each get?"
        ans = f"Each gets {a} / 2 = $<<{a}/2={r}>>{r}.\n#### {r}"
    else:
        a, b, c = rng.randint(2, 9), rng.randint(10, 99), rng.randint(100, 2000)
        r1, r = a * b, a * b + c
        q = (f"{name} has {a} flocks of {b} {thing} each, and {other} has {fmt_num(c, rng)} {thing}. "
             f"How many {thing} do they have together?")
        ans = (f"{name} has {a} * {b} = <<{a}*{b}={r1}>>{r1} {thing}.\n"
               f"Together they have {r1} + {c} = <<{r1}+{c}={r}>>{fmt_num(r, rng, 0.3)} {thing}.\n#### {r}")
    if rng.random() < long_p:
        # a long preamble: with the 5 exemplars it passes the context left for the prompt
        q = f"{bible.passage(rng, rng.randint(25, 40))} {q}"
    return {"question": q, "answer": ans}


def gsm8k_splits(bible, n, seed):
    rng = random.Random(f"{seed}-gsm8k")
    train = [gsm_item(rng, bible) for _ in range(60)]
    test = [gsm_item(rng, bible, long_p=0.04) for _ in range(n)]
    return train, test


def make_gsm8k(out, bible, n, seed):
    train, test = gsm8k_splits(bible, n, seed)
    pa, _ = pa_modules()
    schema = pa.schema([("question", pa.string()), ("answer", pa.string())])
    d = os.path.join(out, "gsm8k", "main")
    write_parquet(os.path.join(d, "train-00000-of-00001.parquet"), train, schema)
    write_parquet(os.path.join(d, "test-00000-of-00001.parquet"), test, schema)
    return {"test": len(test), "train": len(train)}


# ---------------------------------------------------------------------------------------- HellaSwag

ACTIVITIES = ["Personal Care and Style", "Home and Garden", "Food and Entertaining", "Family Life", "Bathing dog",
              "Playing harmonica", "Shepherding", "Sailing", "Café culture", "Holidays and Traditions"]


def lower_first(s):
    return s[:1].lower() + s[1:]


def hellaswag_item(rng, bible, ind):
    wikihow = rng.random() < 0.35
    i, v = bible.verse(rng, 8, 45)
    nxt = bible.verses[i + 1].split()
    k = rng.randint(2, min(5, len(nxt) - 2))
    ctx_a = v
    ctx_b = lower_first(" ".join(nxt[:k]))
    gold = " ".join(nxt[k:])
    endings = [bible.tail(rng) for _ in range(3)]
    if wikihow:
        topic = " ".join(rng.sample(bible.vocab, 2))
        ctx_a = f"[header] How to keep the {topic} [title] {v}"
        if rng.random() < 0.5:
            ctx_a = ctx_a.replace(". ", ".  ", 1)  # double spaces, which preprocess collapses
        gold = f"{gold} [title] {bible.tail(rng, 3, 6)}"
        endings = [f"{e} [step] {bible.tail(rng, 3, 6)}" if rng.random() < 0.5 else e for e in endings]
    if rng.random() < 0.1:
        ctx_b = ""  # some rows have an empty ctx_b; ctx is then ctx_a
    if rng.random() < 0.1:
        gold = "  " + gold + " "  # surrounding spaces, which preprocess strips
    label = rng.randrange(4)
    endings = [maybe_accent(e, rng, 0.12) for e in endings]
    gold = maybe_accent(gold, rng, 0.12)
    endings.insert(label, gold)
    act = rng.choice(ACTIVITIES)
    return {
        "ind": ind,
        "activity_label": act,
        "ctx_a": ctx_a,
        "ctx_b": ctx_b,
        "ctx": f"{ctx_a} {ctx_b}" if ctx_b else ctx_a,
        "endings": endings,
        "source_id": f"wikihow~{rng.randrange(10**5)}" if wikihow else f"activitynet~v_{rng.randrange(16**8):08x}",
        "split": "val",
        "split_type": rng.choice(["indomain", "zeroshot"]),
        "label": str(label),
    }


def make_hellaswag(out, bible, n, seed):
    rng = random.Random(f"{seed}-hellaswag")
    pa, _ = pa_modules()
    schema = pa.schema([("ind", pa.int32()), ("activity_label", pa.string()), ("ctx_a", pa.string()),
                        ("ctx_b", pa.string()), ("ctx", pa.string()), ("endings", pa.list_(pa.string())),
                        ("source_id", pa.string()), ("split", pa.string()), ("split_type", pa.string()),
                        ("label", pa.string())])
    train = [hellaswag_item(rng, bible, 4 * i) for i in range(40)]
    for t in train:
        t["split"] = "train"
    val = [hellaswag_item(rng, bible, 24 + 3 * i) for i in range(n)]
    d = os.path.join(out, "hellaswag", "data")
    write_parquet(os.path.join(d, "train-00000-of-00001.parquet"), train, schema)
    write_parquet(os.path.join(d, "validation-00000-of-00001.parquet"), val, schema)
    return {"validation": len(val), "train": len(train)}


# ---------------------------------------------------------------------------------------- ARC

def arc_item(rng, bible, challenge, n):
    k = rng.choice([3, 4, 4, 4, 4, 5]) if not challenge else rng.choice([3, 4, 4, 4, 5, 5])
    numeric = rng.random() < 0.2 and k <= 4
    labels = [str(i + 1) for i in range(k)] if numeric else list("ABCDE"[:k])
    i, v = bible.verse(rng, 8, 40)
    ws = v.split()
    if not challenge:
        cands = [j for j, w in enumerate(ws) if re.fullmatch(r"[a-z]{4,}", w)]
        if not cands:
            return arc_item(rng, bible, challenge, n)
        j = rng.choice(cands)
        gold = ws[j]
        blanked = " ".join(ws[:j] + ["___"] + ws[j + 1:])
        question = f"Which word fills the blank in this verse? {blanked}"
        others = rng.sample([w for w in bible.vocab if w != gold], k - 1)
    else:
        cut = rng.randint(3, len(ws) - 3)
        question = f"What comes next in this verse: \"{' '.join(ws[:cut])} ...\"?"
        gold = " ".join(ws[cut:cut + rng.randint(2, 6)])
        others = [" ".join(bible.tail(rng).split()[:rng.randint(2, 6)]) for _ in range(k - 1)]
    texts = [maybe_accent(t, rng, 0.12) for t in others]
    g = rng.randrange(k)
    texts.insert(g, maybe_accent(gold, rng, 0.08))
    prefix = "Mercury_SC" if challenge else "MCAS"
    return {"id": f"{prefix}_{n:06d}", "question": question, "choices": {"text": texts, "label": labels},
            "answerKey": labels[g]}


def make_arc(out, bible, n, seed):
    pa, _ = pa_modules()
    schema = pa.schema([("id", pa.string()), ("question", pa.string()),
                        ("choices", pa.struct([("text", pa.list_(pa.string())), ("label", pa.list_(pa.string()))])),
                        ("answerKey", pa.string())])
    counts = {}
    for name, challenge in (("ARC-Easy", False), ("ARC-Challenge", True)):
        rng = random.Random(f"{seed}-{name}")
        d = os.path.join(out, "ai2_arc", name)
        splits = {"train": 40, "validation": 20, "test": n}
        c = 0
        for split, m in splits.items():
            rows = [arc_item(rng, bible, challenge, c + i) for i in range(m)]
            c += m
            write_parquet(os.path.join(d, f"{split}-00000-of-00001.parquet"), rows, schema)
        counts[name] = splits
    return counts


# ---------------------------------------------------------------------------------------- PIQA

def piqa_item(rng, bible):
    _, v = bible.verse(rng, 10, 40)
    ws = v.split()
    cut = rng.randint(3, len(ws) - 4)
    goal = f"How does this verse go on: {' '.join(ws[:cut])}"
    if rng.random() < 0.1:
        goal += "?"
    right = " ".join(ws[cut:])
    wrong = bible.tail(rng, 3, 14)
    right, wrong = maybe_accent(right, rng, 0.12), maybe_accent(wrong, rng, 0.12)
    label = rng.randrange(2)
    sols = [wrong, right] if label else [right, wrong]
    return {"goal": goal, "sol1": sols[0], "sol2": sols[1], "label": label}


def make_piqa(out, bible, n, seed):
    rng = random.Random(f"{seed}-piqa")
    pa, _ = pa_modules()
    schema = pa.schema([("goal", pa.string()), ("sol1", pa.string()), ("sol2", pa.string()), ("label", pa.int64())])
    d = os.path.join(out, "piqa", "data")
    train = [piqa_item(rng, bible) for _ in range(40)]
    val = [piqa_item(rng, bible) for _ in range(n)]
    write_parquet(os.path.join(d, "train-00000-of-00001.parquet"), train, schema)
    write_parquet(os.path.join(d, "validation-00000-of-00001.parquet"), val, schema)
    return {"validation": len(val), "train": len(train)}


# ---------------------------------------------------------------------------------------- WinoGrande

def winogrande_item(rng, bible):
    while True:
        _, v = bible.verse(rng, 10, 45)
        ws = v.split()
        cands = [j for j, w in enumerate(ws[:-3]) if j > 0 and re.fullmatch(r"[A-Z][a-z]{3,}", w) and w in bible.names]
        if cands:
            break
    j = rng.choice(cands)
    gold = ws[j]
    wrong = rng.choice([x for x in bible.names if x != gold])
    if rng.random() < 0.12:
        wrong = rng.choice(["Zoë", "Chloé", "Søren", "Łukasz", "Ångström"])
    sentence = " ".join(ws[:j] + ["_"] + ws[j + 1:])
    answer = rng.randrange(2)
    opts = [wrong, gold] if answer else [gold, wrong]
    return {"sentence": sentence, "option1": opts[0], "option2": opts[1], "answer": str(answer + 1)}


def make_winogrande(out, bible, n, seed):
    rng = random.Random(f"{seed}-winogrande")
    pa, _ = pa_modules()
    schema = pa.schema([("sentence", pa.string()), ("option1", pa.string()), ("option2", pa.string()),
                        ("answer", pa.string())])
    d = os.path.join(out, "winogrande", "winogrande_xl")
    train = [winogrande_item(rng, bible) for _ in range(40)]
    val = [winogrande_item(rng, bible) for _ in range(n)]
    write_parquet(os.path.join(d, "train-00000-of-00001.parquet"), train, schema)
    write_parquet(os.path.join(d, "validation-00000-of-00001.parquet"), val, schema)
    return {"validation": len(val), "train": len(train)}


# ---------------------------------------------------------------------------------------- MMLU-Pro

def mmlu_pro_item(rng, bible, qid, category, validation, long_p=0.0):
    k = rng.randint(3, 10) if rng.random() < 0.3 else 10
    _, v = bible.verse(rng, 8, 40)
    ws = v.split()
    cands = [j for j, w in enumerate(ws) if re.fullmatch(r"[a-z]{4,}", w)] or [len(ws) - 1]
    j = rng.choice(cands)
    gold = ws[j]
    question = f"Which word completes the verse? {' '.join(ws[:j] + ['___'] + ws[j + 1:])}"
    if rng.random() < 0.05:
        question += "\n"  # the harness does not strip the question
    if rng.random() < long_p:
        question = f"Read the passage. {bible.passage(rng, rng.randint(35, 50))}\n{question}"
    options = rng.sample([w for w in bible.vocab if w != gold], k - 1)
    options = [maybe_accent(o, rng, 0.1) if rng.random() < 0.5 else o for o in options]
    if k == 10 and rng.random() < 0.15:
        options[rng.randrange(len(options))] = "N/A"
    g = rng.randrange(k)
    options.insert(g, gold)
    letter = "ABCDEFGHIJ"[g]
    cot = (f"A: Let's think step by step. The verse reads naturally with \"{gold}\". The answer is ({letter})."
           if validation else "")
    return {"question_id": qid, "question": question, "options": options, "answer": letter, "answer_index": g,
            "cot_content": cot, "category": category, "src": f"ori_mmlu-{category.replace(' ', '_')}"}


def make_mmlu_pro(out, bible, n, seed):
    rng = random.Random(f"{seed}-mmlu_pro")
    pa, _ = pa_modules()
    schema = pa.schema([("question_id", pa.int64()), ("question", pa.string()), ("options", pa.list_(pa.string())),
                        ("answer", pa.string()), ("answer_index", pa.int64()), ("cot_content", pa.string()),
                        ("category", pa.string()), ("src", pa.string())])
    val = []
    for c in MMLU_PRO_CATEGORIES:
        for _ in range(5):
            val.append(mmlu_pro_item(rng, bible, len(val), c, True))
    test = [mmlu_pro_item(rng, bible, 70 + i, rng.choice(MMLU_PRO_CATEGORIES[:6]), False, long_p=0.03)
            for i in range(n)]
    d = os.path.join(out, "mmlu_pro", "data")
    write_parquet(os.path.join(d, "validation-00000-of-00001.parquet"), val, schema)
    write_parquet(os.path.join(d, "test-00000-of-00001.parquet"), test, schema)
    return {"test": len(test), "validation": len(val)}


# ---------------------------------------------------------------------------------------- CMMLU

# Words written for these fixtures (the items only have to be Chinese text in CMMLU's layout).
ZH = {
    "agronomy": ["水稻", "小麦", "玉米", "大豆", "土壤", "肥料", "种子", "灌溉", "阳光", "雨水", "害虫", "秧苗", "收割", "耕地"],
    "anatomy": ["骨骼", "肌肉", "心脏", "血液", "神经", "细胞", "肝脏", "肺部", "皮肤", "关节", "大脑", "血管", "胃", "肾脏"],
    "ancient_chinese": ["诗经", "论语", "孟子", "楚辞", "史记", "汉字", "书法", "春秋", "礼记", "周易", "庄子", "左传", "尚书", "乐府"],
}
ZH_QUESTIONS = ["下列关于{a}的说法，哪一项是正确的？", "{a}与{b}的关系是什么？", "以下哪一项属于{a}？",
                "“{a}”一词最早见于哪里？", "{a}的主要作用是什么？", "关于{a}和{b}，下列说法错误的是"]
ZH_OPTIONS = ["{a}和{b}", "{a}的{b}", "只有{a}", "{a}与{b}无关", "{a}比{b}重要", "{a}，{b}"]


def cmmlu_row(rng, subject):
    words = ZH[subject]
    a, b = rng.sample(words, 2)
    q = rng.choice(ZH_QUESTIONS).format(a=a, b=b)
    if rng.random() < 0.1:
        q = f" {q} "  # the harness strips the question (Question.strip()), not the options
    opts = set()
    while len(opts) < 4:
        x, y = rng.sample(words, 2)
        o = rng.choice(ZH_OPTIONS).format(a=x, b=y)
        if rng.random() < 0.08:
            o = f"{o}（DNA）"
        opts.add(o)
    opts = sorted(opts)
    rng.shuffle(opts)
    return [q, *opts, "ABCD"[rng.randrange(4)]]


def make_cmmlu(out, n, seed):
    rng = random.Random(f"{seed}-cmmlu")
    per = max(1, n // len(CMMLU_SUBJECTS))
    counts = {}
    for s in CMMLU_SUBJECTS:
        for split, m in (("dev", 5), ("test", per)):
            d = os.path.join(out, "cmmlu", split)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"{s}.csv"), "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                w.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
                for i in range(m):
                    w.writerow([i, *cmmlu_row(rng, s)])
            counts[f"{split}/{s}"] = m
    return counts


# ---------------------------------------------------------------------------------------- BBH

OBJECTS = ["a goat", "two sheep", "a camel", "three figs", "an ox", "a donkey", "two doves", "a lamb", "four loaves",
           "a pomegranate", "two fishes", "a jalapeño"]
COUNTS = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4}


def bbh_item(rng, bible, task):
    if task == "boolean_expressions":
        def expr(depth):
            if depth == 0 or rng.random() < 0.3:
                return rng.choice(["True", "False"])
            op = rng.choice(["and", "or", "not"])
            if op == "not":
                return f"not {expr(depth - 1)}"
            return f"( {expr(depth - 1)} {op} {expr(depth - 1)} )"
        e = expr(3)
        return {"input": f"{e} is", "target": str(eval(e))}  # noqa: S307 (our own expression)
    if task == "object_counting":
        objs = rng.sample(OBJECTS, rng.randint(2, 6))
        total = sum(COUNTS[o.split()[0]] for o in objs)
        return {"input": f"I have {', '.join(objs[:-1])}, and {objs[-1]}. How many animals and fruits do I have?",
                "target": str(total)}
    if task == "word_sorting":
        ws = rng.sample(bible.vocab, rng.randint(4, 12))
        if rng.random() < 0.15:
            ws[rng.randrange(len(ws))] = rng.choice(["naïve", "café", "élan", "über", "señor"])
        return {"input": f"Sort the following words alphabetically: List: {' '.join(ws)}", "target": " ".join(sorted(ws))}
    if task == "date_understanding":
        day = datetime.date(1611, 1, 1) + datetime.timedelta(days=rng.randrange(3000))
        delta = rng.choice([1, -1, 7, -7, 30, 365])
        ans = day + datetime.timedelta(days=delta)
        what = {1: "tomorrow", -1: "yesterday", 7: "one week from today", -7: "one week ago",
                30: "30 days from today", 365: "365 days from today"}[delta]
        opts = {ans}
        while len(opts) < rng.choice([4, 5, 6]):
            opts.add(ans + datetime.timedelta(days=rng.choice([-3, -2, 2, 3, 31, -31, 366])))
        opts = sorted(opts)
        rng.shuffle(opts)
        letters = "ABCDEF"
        lines = "\n".join(f"({letters[i]}) {o.strftime('%m/%d/%Y')}" for i, o in enumerate(opts))
        return {"input": f"Today is {day.strftime('%m/%d/%Y')}. What is the date {what} in MM/DD/YYYY?\nOptions:\n{lines}",
                "target": f"({letters[opts.index(ans)]})"}
    raise ValueError(task)


def bbh_tests(bible, n, seed):
    per = max(1, n // len(BBH_SUBTASKS))
    out = {}
    for t in BBH_SUBTASKS:
        rng = random.Random(f"{seed}-bbh-{t}")
        out[t] = [bbh_item(rng, bible, t) for _ in range(per)]
    return out


def make_bbh(out, bible, n, seed):
    pa, _ = pa_modules()
    schema = pa.schema([("input", pa.string()), ("target", pa.string())])
    counts = {}
    for t, rows in bbh_tests(bible, n, seed).items():
        write_parquet(os.path.join(out, "bbh", t, "test-00000-of-00001.parquet"), rows, schema)
        counts[t] = len(rows)
    return counts


# ---------------------------------------------------------------------------------------- corpus

def write_corpus(path, bible, n, seed, fresh=4000):
    """Training text in the generative tasks' prompt formats, so that a small model trained on it
    answers in format: it writes "#### N" or "The answer is N.", then starts the next "Question:" or
    "Q:", which the tasks' stop strings and filters must then handle. Besides `fresh` new items it
    holds the GSM8K and BBH fixtures' test items with their answers, on purpose: a model that has
    seen them gets some right, so the scoring of right answers (exact_match's normalisation) is
    compared too. (Such a model's scores say nothing about the model, only about the agreement.)"""
    rng = random.Random(f"{seed}-corpus")

    def cot(it):
        gold = it["answer"].rsplit("####", 1)[1].strip()
        work = re.sub(r"<<[^>]*>>", "", it["answer"].rsplit("####", 1)[0].strip().replace("\n", " "))
        return f"Q: {it['question']}\nA: {work} The answer is {gold}.\n\n"

    chunks = []
    for _ in range(fresh):
        kind = rng.randrange(4)
        if kind < 2:
            it = gsm_item(rng, bible)
            chunks.append(f"Question: {it['question']}\nAnswer: {it['answer']}\n\n")
        elif kind == 2:
            chunks.append(cot(gsm_item(rng, bible)))
        else:
            it = bbh_item(rng, bible, rng.choice(BBH_SUBTASKS))
            chunks.append(f"Q: {it['input']}\nA: {it['target']}\n\n")
    _, test = gsm8k_splits(bible, n, seed)
    for it in test:
        chunks.append(f"Question: {it['question']}\nAnswer: {it['answer']}\n\n")
        chunks.append(cot(it))
    for rows in bbh_tests(bible, n, seed).values():
        chunks.extend(f"Q: {it['input']}\nA: {it['target']}\n\n" for it in rows)
    rng.shuffle(chunks)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(chunks))
    return len(chunks)


# ---------------------------------------------------------------------------------------- task YAMLs

def yaml_str(s):
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def write_task(dst, name, include, path, files, extra=None):
    """One task YAML: the harness's task at `include`, on local files (split -> absolute path)."""
    with open(os.path.join(dst, f"{name}.yaml"), "w", encoding="utf-8") as y:
        y.write(f"include: {yaml_str(include)}\n")
        y.write(f"task: {name}\n")
        y.write(f"dataset_path: {path}\n")
        y.write("dataset_name: null\n")
        y.write("dataset_kwargs:\n  data_files:\n")
        for split, p in files.items():
            y.write(f"    {split}: {yaml_str(os.path.abspath(p))}\n")
        for k, v in (extra or {}).items():
            y.write(f"{k}: {v}\n")


def write_group(dst, group, original, tasks):
    """A group over `tasks` with the aggregation of the harness's group file `original`."""
    import yaml

    with open(original, encoding="utf-8") as f:
        g = yaml.safe_load(f)
    out = {"group": group, "task": tasks}
    for k in ("aggregate_metric_list", "metadata"):
        if k in g:
            out[k] = g[k]
    with open(os.path.join(dst, f"_{group}.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(out, f, allow_unicode=True, sort_keys=False)


def write_tasks(data, dst):
    try:
        import lm_eval
    except ImportError:
        sys.exit("--tasks-out needs lm_eval importable: run this with the lm-eval venv's python")
    tasks_dir = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    os.makedirs(dst, exist_ok=True)

    def lm(*p):
        path = os.path.join(tasks_dir, *p)
        if not os.path.isfile(path):
            sys.exit(f"{path} is missing: this lm-eval ({getattr(lm_eval, '__version__', '?')}) lays its tasks out differently")
        return path

    def split(*p):
        return os.path.join(data, *p)

    pq1 = "-00000-of-00001.parquet"
    gsm = {"train": split("gsm8k", "main", "train" + pq1), "test": split("gsm8k", "main", "test" + pq1)}
    write_task(dst, "keel_gsm8k", lm("gsm8k", "gsm8k.yaml"), "parquet", gsm)
    write_task(dst, "keel_gsm8k_cot", lm("gsm8k", "gsm8k-cot.yaml"), "parquet", gsm)
    hs = {s: split("hellaswag", "data", s + pq1) for s in ("train", "validation")}
    write_task(dst, "keel_hellaswag", lm("hellaswag", "hellaswag.yaml"), "parquet", hs)
    for task, sub in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
        files = {s: split("ai2_arc", sub, s + pq1) for s in ("train", "validation", "test")}
        write_task(dst, f"keel_{task}", lm("arc", f"{task}.yaml"), "parquet", files)
    write_task(dst, "keel_piqa", lm("piqa", "piqa.yaml"), "parquet",
               {s: split("piqa", "data", s + pq1) for s in ("train", "validation")})
    write_task(dst, "keel_winogrande", lm("winogrande", "default.yaml"), "parquet",
               {s: split("winogrande", "winogrande_xl", s + pq1) for s in ("train", "validation")})
    write_task(dst, "keel_mmlu_pro", lm("leaderboard", "mmlu_pro", "mmlu_pro.yaml"), "parquet",
               {s: split("mmlu_pro", "data", s + pq1) for s in ("test", "validation")})
    names = []
    for s in CMMLU_SUBJECTS:
        name = f"keel_cmmlu_{s}"
        write_task(dst, name, lm("cmmlu", f"cmmlu_{s}.yaml"), "csv",
                   {sp: split("cmmlu", sp, f"{s}.csv") for sp in ("test", "dev")})
        names.append(name)
    write_group(dst, "keel_cmmlu", lm("cmmlu", "_cmmlu.yaml"), names)
    for variant in ("zeroshot", "fewshot", "cot_fewshot"):
        names = []
        for t in BBH_SUBTASKS:
            name = f"keel_bbh_{variant}_{t}"
            write_task(dst, name, lm("bbh", variant, f"{t}.yaml"), "parquet", {"test": split("bbh", t, "test" + pq1)})
            names.append(name)
        write_group(dst, f"keel_bbh_{variant}", lm("bbh", variant, f"_bbh_{variant}.yaml"), names)
    return tasks_dir


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kjv", default="data/raw/kjv.txt", help="the King James Bible, one verse per line")
    ap.add_argument("--out", required=True, help="folder for the fixture files")
    ap.add_argument("--n", type=int, default=N_DEFAULT, help=f"items per task (default {N_DEFAULT})")
    ap.add_argument("--seed", type=int, default=SEED_DEFAULT)
    ap.add_argument("--tasks-out", help="also write lm-eval task YAMLs for the fixtures here")
    ap.add_argument("--corpus-out", help="only write a training text in the generative tasks' formats to this file")
    args = ap.parse_args()

    if args.corpus_out:
        k = write_corpus(args.corpus_out, Bible(read_verses(args.kjv)), args.n, args.seed)
        print(f"{k} items in the generative tasks' formats (the GSM8K and BBH test items among them) -> {args.corpus_out}")
        return

    out = os.path.abspath(args.out)
    bible = Bible(read_verses(args.kjv))
    manifest = {"seed": args.seed, "n": args.n, "kjv": os.path.abspath(args.kjv),
                "cmmlu_subjects": CMMLU_SUBJECTS, "bbh_subtasks": BBH_SUBTASKS, "counts": {}}
    c = manifest["counts"]
    c["gsm8k"] = make_gsm8k(out, bible, args.n, args.seed)
    c["hellaswag"] = make_hellaswag(out, bible, args.n, args.seed)
    c["ai2_arc"] = make_arc(out, bible, args.n, args.seed)
    c["piqa"] = make_piqa(out, bible, args.n, args.seed)
    c["winogrande"] = make_winogrande(out, bible, args.n, args.seed)
    c["mmlu_pro"] = make_mmlu_pro(out, bible, args.n, args.seed)
    c["cmmlu"] = make_cmmlu(out, args.n, args.seed)
    c["bbh"] = make_bbh(out, bible, args.n, args.seed)
    if args.tasks_out:
        manifest["lm_eval_tasks"] = write_tasks(out, os.path.abspath(args.tasks_out))
        manifest["tasks_out"] = os.path.abspath(args.tasks_out)
    with open(os.path.join(out, "fixtures.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
    print(f"fixtures -> {out}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    if args.tasks_out:
        print(f"lm-eval tasks -> {manifest['tasks_out']} (including {manifest['lm_eval_tasks']})")


if __name__ == "__main__":
    main()
