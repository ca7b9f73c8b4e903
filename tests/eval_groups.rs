//! The paper's domains as groups (`src/eval/groups.rs`): lm-evaluation-harness's group average
//! (size-weighted over the members that report a metric) on hand-made numbers, and a group run end
//! to end, whose numbers must be those of its member run alone.

mod common;

use common::eval::{keel, read_json, temp_dir};

use keel::eval::groups::{aggregate, Member};
use std::collections::BTreeMap;
use std::path::Path;

fn member(bench: &str, items: usize, metrics: &[(&str, f64)]) -> Member {
    Member {
        bench: bench.into(),
        folder: bench.into(),
        items,
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
    }
}

#[test]
fn a_group_weights_by_size_over_the_members_reporting_each_metric() {
    // acc: (0.5*100 + 0.8*300 + 0.2*100) / 500 = 0.62; plain mean (0.5+0.8+0.2)/3 = 0.5.
    // acc_norm only from the first two: (0.6*100 + 0.9*300) / 400 = 0.825; plain 0.75.
    let agg = aggregate(&[
        member("hellaswag", 100, &[("acc", 0.5), ("acc_norm", 0.6)]),
        member("arc_easy", 300, &[("acc", 0.8), ("acc_norm", 0.9)]),
        member("winogrande", 100, &[("acc", 0.2)]),
    ]);
    let close = |k: &str, v: f64| assert!((agg[k] - v).abs() < 1e-12, "{k}: {} vs {v}", agg[k]);
    close("acc", 0.62);
    close("acc_macro", 0.5);
    close("acc_norm", 0.825);
    close("acc_norm_macro", 0.75);
    assert_eq!(agg.len(), 4);
}

#[test]
fn the_multilingual_group_reports_what_its_member_reports_alone() {
    let root = temp_dir("groups-multi");
    let run = common::tiny_run(&root.join("run"), "keel", 128);
    let data = root.join("data");
    let cmmlu = data.join("cmmlu");
    std::fs::create_dir_all(cmmlu.join("test")).unwrap();
    std::fs::write(
        cmmlu.join("test/agronomy.csv"),
        ",Question,A,B,C,D,Answer\n0,水稻属于哪一类作物？,粮食作物,经济作物,饲料作物,蔬菜,A\n1,小麦的原产地是？,西亚,东亚,南美,非洲,B\n2,玉米是什么科植物？,禾本科,豆科,茄科,十字花科,C\n",
    )
    .unwrap();
    let eval = |bench: &str, data: &Path, out: &str| {
        let o = keel()
            .args(["eval", "--quiet", "--bench", bench, "--run"])
            .arg(&run)
            .arg("--data")
            .arg(data)
            .arg("--out")
            .arg(root.join(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    eval("multilingual", &data, "group");
    eval("cmmlu", &cmmlu, "alone");
    let group = read_json(&root.join("group/results.json"));
    let alone = read_json(&root.join("alone/results.json"));
    let member = read_json(&root.join("group/cmmlu-0shot/results.json"));
    assert!(root.join("group/cmmlu-0shot/questions.csv").is_file());
    assert_eq!(member["acc"], alone["acc"]);
    assert_eq!(group["acc"], alone["acc"]);
    assert_eq!(group["acc_norm"], alone["acc_norm"]);
    assert_eq!(group["members"][0]["items"], 3);

    // A member's data missing from ROOT: exit 2 naming the folder, nothing written.
    let o = keel()
        .args(["eval", "--quiet", "--bench", "knowledge", "--run"])
        .arg(&run)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(root.join("bad"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("member task mmlu"), "{err}");
    assert!(!root.join("bad").exists());
    std::fs::remove_dir_all(&root).unwrap();
}
