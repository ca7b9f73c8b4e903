//! `keel plot` turns fixture CSVs (a run, a sweep, a stress folder, a probe CSV) into non-empty,
//! valid PNG and SVG files.

use std::path::Path;
use std::process::Command;

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn fixtures(d: &Path) {
    let mut metrics = String::from("step,tokens,lr,loss,grad_norm,tokens_per_s,elapsed_s\n");
    for s in 1..=30 {
        metrics.push_str(&format!("{s},{},{},{},1.0,1000.0,0.1\n", s * 64, 1e-3 * s as f64, 5.5 - 0.1 * s as f64));
    }
    for run in ["keel_run", "pre_run"] {
        write(&d.join(run).join("metrics.csv"), &metrics);
    }
    write(&d.join("keel_run/config.toml"), "[model]\nplacement = \"keel\"\n");
    write(&d.join("pre_run/config.toml"), "[model]\nplacement = \"pre_ln\"\n");
    write(
        &d.join("keel_run/summary.json"),
        r#"{"run_name":"k","placement":"keel","depth":4,"d_model":8,"n_params":1,"steps_planned":30,"steps_completed":29,"tokens":1,"initial_loss":5.4,"final_train_loss":2.6,"final_val_loss":null,"final_val_ppl":null,"diverged":true,"diverged_at_step":20,"tokens_per_s":1.0,"wall_time_s":1.0,"device":"Cpu"}"#,
    );
    let mut grads = String::from("step,layer,kind,grad_norm\n");
    for step in [1, 30] {
        grads.push_str(&format!("{step},,embedding,0.5\n"));
        for l in 0..8 {
            grads.push_str(&format!(
                "{step},{l},{},{}\n",
                if l % 2 == 0 { "attn" } else { "ffn" },
                0.01 * (l + 1) as f64 * step as f64
            ));
        }
    }
    write(&d.join("keel_run/grad_norms.csv"), &grads);
    let mut summary = String::from(keel::sweep::SUMMARY_HEADER);
    summary.push('\n');
    for (p, base) in [("pre_ln", 3.0), ("keel", 2.8)] {
        for (i, depth) in [64, 128, 256].iter().enumerate() {
            summary.push_str(&format!(
                "r,{p},{depth},{},32,{},0.003,0,1000,1000,2.5,{},10,,100,1,50\n",
                depth / 2,
                if p == "keel" { depth.to_string() } else { String::new() },
                base - 0.1 * i as f64
            ));
        }
    }
    write(&d.join("sweep/summary.csv"), &summary);
    // An alpha ablation: Keel at two depths, alpha = 1, sqrt L, L, 4L.
    let mut ablation = String::from(keel::sweep::SUMMARY_HEADER);
    ablation.push('\n');
    for depth in [16usize, 64] {
        for (i, alpha) in [1.0, (depth as f64).sqrt(), depth as f64, 4.0 * depth as f64].iter().enumerate() {
            ablation.push_str(&format!(
                "r,keel,{depth},{},32,{alpha},0.003,0,1000,1000,2.5,{},10,,100,1,50\n",
                depth / 2,
                3.0 - 0.1 * i as f64
            ));
        }
    }
    ablation.push_str("r,pre_ln,16,8,32,,0.003,0,1000,1000,2.5,2.9,10,,100,1,50\n");
    write(&d.join("ablation/summary.csv"), &ablation);
    write(
        &d.join("stress/stress.csv"),
        "placement,depth,max_lr,survived,diverged_at_step,reason,steps,final_loss,best_loss\npost_ln,64,1.7e-2,false,141,unrecovered_spike,191,3.6,1.9\npost_ln,512,1e-2,false,83,stagnation,183,3.6,3.4\nkeel,64,3e-2,false,247,stagnation,347,2.4,1.5\nkeel,512,1.2e-2,false,98,stagnation,198,3.4,2.3\n",
    );
    let mut probe =
        String::from("placement,depth,layer,kind,input_grad_norm,param_grad_norm,input_grad_ratio,predicted_ratio\n");
    for l in 0..8 {
        probe.push_str(&format!("post_ln,8,{l},attn,1.0,1.0,{},{}\n", 0.5f64.powi(8 - l), 0.5f64.powi(8 - l)));
        probe.push_str(&format!("keel,8,{l},attn,1.0,1.0,1.0,\n"));
    }
    write(&d.join("probe.csv"), &probe);
    // A trained-run probe (keel probe --run): the prediction from measured branch ratios too.
    let mut trained = String::from(
        "placement,depth,layer,kind,input_grad_norm,param_grad_norm,input_grad_ratio,predicted_ratio,branch_ratio,predicted_from_branches,sum_ratio,predicted_from_sums\n",
    );
    for l in 0..8 {
        trained.push_str(&format!(
            "post_ln,8,{l},attn,1.0,1.0,{},1e-2,0.1,{},1.2,{}\n",
            0.5f64.powi(8 - l),
            0.99f64.powi(7 - l),
            1.2f64.powi(l - 7)
        ));
    }
    write(&d.join("trained.csv"), &trained);
}

fn check_png(p: &Path) {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(b.len() > 10_000, "{} is only {} bytes", p.display(), b.len());
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", p.display());
    let (w, h) = (u32::from_be_bytes(b[16..20].try_into().unwrap()), u32::from_be_bytes(b[20..24].try_into().unwrap()));
    assert_eq!((w, h), (960, 600));
}

fn check_svg(p: &Path, needles: &[&str]) {
    let t = std::fs::read_to_string(p).unwrap();
    assert!(t.starts_with("<svg") && t.trim_end().ends_with("</svg>"), "{} is not an SVG document", p.display());
    for n in needles {
        assert!(t.contains(n), "{} lacks {n:?}", p.display());
    }
}

#[test]
fn figures_from_fixture_csvs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fixtures(d);
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "plot",
            "keel_run",
            "pre_run",
            "sweep",
            "stress",
            "probe.csv",
            "trained.csv",
            "--out",
            "figs",
            "--log-x",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (name, needles) in [
        ("loss", &["keel_run", "pre_run", "training loss"][..]),
        ("grad_norms", &["step 1", "step 30", "sub-layer"][..]),
        ("depth_final_val_loss", &["pre_ln", "keel", "depth (sub-layers)"][..]),
        ("max_lr", &["post_ln", "keel", "maximum tolerable"][..]),
        ("probe", &["post_ln L=8", "keel L=8"][..]),
        (
            "probe-trained",
            &["post_ln L=8 predicted from branches", "post_ln L=8 predicted from sums", "dotted: from sums"][..],
        ),
    ] {
        check_png(&d.join(format!("figs/{name}.png")));
        check_svg(&d.join(format!("figs/{name}.svg")), needles);
    }
    // Placement colours are the same in every figure (keel's green).
    for f in ["depth_final_val_loss", "max_lr"] {
        assert!(std::fs::read_to_string(d.join(format!("figs/{f}.svg"))).unwrap().contains("#2CA02C"), "{f}");
    }
    // --against alpha: one line per depth of Keel; Pre-LN, without an alpha, left out.
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["plot", "ablation", "--against", "alpha", "--out", "figs"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_png(&d.join("figs/final_val_loss_vs_alpha.png"));
    check_svg(&d.join("figs/final_val_loss_vs_alpha.svg"), &["keel L=16", "keel L=64", "against alpha"]);
    assert!(!std::fs::read_to_string(d.join("figs/final_val_loss_vs_alpha.svg")).unwrap().contains("pre_ln"));
    // --against lr with the placements interleaved within a depth: one line per placement and depth.
    let mut lrs = String::from(keel::sweep::SUMMARY_HEADER);
    lrs.push('\n');
    for lr in ["0.001", "0.003"] {
        for p in ["keel", "pre_ln"] {
            lrs.push_str(&format!("r,{p},16,8,32,,{lr},0,1000,1000,2.5,3.0,10,,100,1,50\n"));
        }
    }
    write(&d.join("lrs/summary.csv"), &lrs);
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["plot", "lrs", "--against", "lr", "--out", "figs"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(d.join("figs/final_val_loss_vs_lr.svg")).unwrap();
    assert_eq!((svg.matches("keel L=16").count(), svg.matches("pre_ln L=16").count()), (1, 1), "one legend entry each");
    let bad = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["plot", "nothing_here", "--out", "figs"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("neither a run directory"));
}

#[test]
fn damaged_csvs_exit_2_naming_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let header = "step,tokens,lr,loss,grad_norm,tokens_per_s,elapsed_s\n";
    let cases = [
        (format!("{header}garbage,line\n"), "line 2", "2 fields where the header has 7"),
        (format!("{header}1,64,0.001,5.5,1,1000,0.1\n2,128,0.001,abc,1,1000,0.1\n"), "line 3", "`abc` in column loss"),
        (format!("{header}x,64,0.001,5.5,1,1000,0.1\n"), "line 2", "`x` in column step"),
    ];
    for (i, (text, line, what)) in cases.iter().enumerate() {
        let run = d.join(format!("run{i}"));
        write(&run.join("metrics.csv"), text);
        let out = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["plot", &format!("run{i}"), "--out", "figs"])
            .current_dir(d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        for needle in [&format!("run{i}/metrics.csv"), *line, *what] {
            assert!(err.contains(needle), "{text}: stderr lacks {needle:?}:\n{err}");
        }
        assert!(!d.join("figs").exists(), "nothing is written for a damaged input");
    }
    // The same for a sweep's summary.csv.
    let mut summary = String::from(keel::sweep::SUMMARY_HEADER);
    summary.push_str("\nr,keel,deep,4,32,8,0.003,0,1000,1000,2.5,2.4,10,,100,1,50\n");
    write(&d.join("sw/summary.csv"), &summary);
    let out =
        Command::new(env!("CARGO_BIN_EXE_keel")).args(["plot", "sw", "--out", "figs"]).current_dir(d).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("sw/summary.csv, line 2: `deep` in column depth"), "{err}");
}

/// A figure that cannot be drawn (a run whose metrics.csv holds only its header) fails the
/// command, and nothing is written: no blank figure, and not the figures drawn before it.
#[test]
fn a_failed_plot_writes_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fixtures(d);
    write(&d.join("empty_run/metrics.csv"), "step,tokens,lr,loss,grad_norm,tokens_per_s,elapsed_s\n");
    let plot = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_keel")).arg("plot").args(args).current_dir(d).output().unwrap()
    };
    let out = plot(&["empty_run", "--out", "figs"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no finite points"), "{err}");
    assert!(!d.join("figs").exists(), "nothing is written for a figure that cannot be drawn");
    // Into an existing folder, with a figure that can be drawn before the one that cannot.
    write(&d.join("old/notes.txt"), "mine");
    let out = plot(&["probe.csv", "empty_run", "--out", "old"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let left: Vec<_> = std::fs::read_dir(d.join("old")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["notes.txt"], "no new file in the output folder");
}
