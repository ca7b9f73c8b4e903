//! `keel plot` turns fixture CSVs (a run, a sweep, a stress folder, a probe CSV) into non-empty,
//! valid PNG and SVG files; draws every run given, survivors of a stress ramp as lower bounds,
//! validation beside training loss and a sweep while it runs; and its tick labels and EMA.

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
        ("probe-trained", &["post_ln L=8", "measured", "predicted from branches", "predicted from sums"][..]),
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

fn keel_plot(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel")).arg("plot").args(args).current_dir(dir).output().unwrap()
}

/// The text of every `<text>` element of an SVG written by plotters (its content is on the line
/// after the tag).
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| Some(t.split_once('>')?.1.split("</text>").next()?.trim().to_string()))
        .collect()
}

/// The stroke colours of the SVG's polylines (the lines drawn, legend samples included).
fn line_colors(svg: &str) -> std::collections::BTreeSet<String> {
    svg.split("<polyline")
        .skip(1)
        .filter_map(|p| Some(p.split("stroke=\"").nth(1)?.split('"').next()?.to_string()))
        .collect()
}

/// A run directory: config (placement, depth, planned steps), `steps` logged steps of
/// metrics.csv, eval.csv at `evals`, grad_norms.csv at step 1, every 10th and the last, over
/// `depth` layers.
fn run(dir: &Path, placement: &str, depth: usize, planned: usize, steps: usize, evals: &[usize]) {
    write(
        &dir.join("config.toml"),
        &format!("[model]\nplacement = \"{placement}\"\ndepth = {depth}\n[train]\nsteps = {planned}\n"),
    );
    let mut m = String::from("step,tokens,lr,loss,grad_norm,tokens_per_s,elapsed_s\n");
    for s in 1..=steps {
        m.push_str(&format!("{s},{},1e-3,{},1.0,1000.0,0.1\n", s * 64, 5.5 - 0.05 * s as f64));
    }
    write(&dir.join("metrics.csv"), &m);
    let mut e = String::from("step,val_loss,val_ppl\n");
    for s in evals {
        e.push_str(&format!("{s},{},1.0\n", 5.6 - 0.05 * *s as f64));
    }
    write(&dir.join("eval.csv"), &e);
    let mut g = String::from("step,layer,kind,grad_norm\n");
    for step in [1, steps].into_iter().chain((10..steps).step_by(10)).collect::<std::collections::BTreeSet<_>>() {
        g.push_str(&format!("{step},,embedding,0.5\n"));
        for l in 0..depth {
            g.push_str(&format!("{step},{l},attn,{}\n", 0.01 * (l + 1) as f64 * step as f64));
        }
    }
    write(&dir.join("grad_norms.csv"), &g);
}

fn finish(dir: &Path, steps: usize) {
    write(
        &dir.join("summary.json"),
        &format!(
            r#"{{"run_name":"r","placement":"keel","depth":4,"d_model":8,"n_params":1,"steps_planned":{steps},"steps_completed":{steps},"tokens":1,"initial_loss":5.4,"final_train_loss":2.6,"final_val_loss":2.7,"final_val_ppl":null,"diverged":false,"diverged_at_step":null,"tokens_per_s":1.0,"wall_time_s":1.0,"device":"Cpu"}}"#
        ),
    );
    write(&dir.join("DONE"), "finished\n");
}

/// `keel plot RUN1 RUN2` draws the gradient norms of both runs (a colour per run, a line style
/// per step), not only the first; more than three steps give one figure per run.
#[test]
fn gradient_norms_of_every_run_given() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    run(&d.join("deep-keel"), "keel", 8, 30, 30, &[]);
    run(&d.join("shallow-pre"), "pre_ln", 4, 30, 30, &[]);
    let out = keel_plot(d, &["deep-keel", "shallow-pre", "--out", "figs"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(d.join("figs/grad_norms.svg")).unwrap();
    let texts = svg_texts(&svg);
    for name in ["deep-keel", "shallow-pre", "step 1", "step 30"] {
        assert!(texts.iter().any(|t| t == name), "legend lacks {name:?}: {texts:?}");
    }
    // Keel's green and Pre-LN's blue both stroke lines: both runs are drawn.
    let colors = line_colors(&svg);
    assert!(colors.contains("#2CA02C") && colors.contains("#1F77B4"), "{colors:?}");
    // Four steps asked for: a figure per run, each with all four.
    let out = keel_plot(d, &["deep-keel", "shallow-pre", "--steps", "1,10,20,30", "--out", "four"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for r in ["deep-keel", "shallow-pre"] {
        let texts = svg_texts(&std::fs::read_to_string(d.join(format!("four/grad_norms-{r}.svg"))).unwrap());
        assert!(texts.iter().any(|t| t == "step 30"), "{r}: {texts:?}");
    }
    // Steps the runs lack are said, not silently dropped.
    let out = keel_plot(d, &["deep-keel", "shallow-pre", "--steps", "1,15,25,30", "--out", "gaps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("deep-keel has no gradient norms at step 15, 25 (recorded: 1, 10, 20, 30)"), "{err}");
    assert!(d.join("gaps/grad_norms.svg").exists(), "two steps left: one figure");
}

/// A stress run that survived the whole ramp is drawn as a lower bound (an arrow up, and a
/// legend note), and a grid whose limits are all equal gets distinct, plain tick labels.
#[test]
fn stress_survivors_are_lower_bounds_and_equal_values_get_readable_ticks() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let header = "placement,depth,max_lr,survived,diverged_at_step,reason,steps,final_loss,best_loss\n";
    write(
        &d.join("mixed/stress.csv"),
        &format!(
            "{header}pre_ln,4,2.6e-1,false,59,stagnation,159,3.3,2.6\nkeel,4,9e-1,true,,,200,3.6,2.7\npre_ln,16,9e-1,true,,,200,4.0,2.8\nkeel,16,9e-1,true,,,200,4.5,3.0\n"
        ),
    );
    let mut equal = String::from(header);
    for depth in [4, 8, 16] {
        for p in ["pre_ln", "keel", "post_ln"] {
            equal.push_str(&format!("{p},{depth},5e-2,true,,,40,2.4,2.3\n"));
        }
    }
    write(&d.join("equal/stress.csv"), &equal);
    for (folder, survivors) in [("mixed", 3), ("equal", 9)] {
        let out = keel_plot(d, &[folder, "--out", folder]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let svg = std::fs::read_to_string(d.join(format!("{folder}/max_lr.svg"))).unwrap();
        let texts = svg_texts(&svg);
        assert!(texts.iter().any(|t| t.contains("survived the ramp")), "{texts:?}");
        // One arrowhead per survivor, and the legend's.
        assert_eq!(svg.matches("<polygon").count(), survivors + 1, "{folder}");
        // Tick labels: numbers written plainly, none repeated.
        let ticks: Vec<&String> = texts.iter().filter(|t| t.parse::<f64>().is_ok()).collect();
        let distinct: std::collections::BTreeSet<_> = ticks.iter().collect();
        assert_eq!(distinct.len(), ticks.len(), "{folder}: repeated tick labels {ticks:?}");
        assert!(ticks.len() >= 5, "{folder}: {ticks:?}");
        assert!(ticks.iter().all(|t| !t.contains('e')), "{folder}: {ticks:?}");
    }
    let texts = svg_texts(&std::fs::read_to_string(d.join("equal/max_lr.svg")).unwrap());
    for label in ["0.05", "4", "8", "16"] {
        assert!(texts.iter().any(|t| t == label), "no tick {label}: {texts:?}");
    }
    // Without survivors, no lower-bound note and no arrow.
    write(
        &d.join("none/stress.csv"),
        &format!("{header}keel,4,3e-2,false,9,stagnation,20,3.0,2.0\nkeel,8,2e-2,false,9,stagnation,20,3.0,2.0\n"),
    );
    let out = keel_plot(d, &["none", "--out", "none"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(d.join("none/max_lr.svg")).unwrap();
    assert!(!svg.contains("survived the ramp") && !svg.contains("<polygon"));
}

#[test]
fn tick_labels_are_plain_numbers() {
    use keel::plot::{tick_label, ticks, Scale};
    for (v, want) in [
        (1.0, "1"),
        (10.0, "10"),
        (100.0, "100"),
        (0.1, "0.1"),
        (0.01, "0.01"),
        (0.05, "0.05"),
        (1e-5, "1e-5"),
        (2.5e-5, "2.5e-5"),
        (1e6, "1e6"),
        (31.6227766, "31.62"),
        (10f64.powf(-3.0), "0.001"),
        (0.0, "0"),
    ] {
        assert_eq!(tick_label(v), want, "{v}");
    }
    let labels = |scale, lo: f64, hi: f64| ticks(scale, lo, hi).labels;
    assert_eq!(labels(Scale::Log10, -0.1, 2.1), ["1", "10", "100"]);
    assert_eq!(labels(Scale::Log10, -5.2, -0.9), ["1e-5", "1e-4", "0.001", "0.01", "0.1"]);
    assert_eq!(labels(Scale::Log2, 1.9, 4.1), ["4", "8", "16"]);
    // Under two decades: 1, 2 and 5 times the powers.
    assert_eq!(labels(Scale::Log10, -0.05, 1.8), ["1", "2", "5", "10", "20", "50"]);
    // All values equal (0.05): the range padded by half a decade.
    let l = 0.05f64.log10();
    assert_eq!(labels(Scale::Log10, l - 0.5, l + 0.5), ["0.02", "0.05", "0.1"]);
    // A narrow range: more digits, never a repeated label.
    for (lo, hi) in [(0.0500f64, 0.0512f64), (3.7001, 3.7003), (1.0, 1.0001)] {
        for scale in [Scale::Log10, Scale::Linear] {
            let t = ticks(scale, scale.to_axis(lo).unwrap(), scale.to_axis(hi).unwrap());
            let distinct: std::collections::BTreeSet<_> = t.labels.iter().collect();
            assert!(t.labels.len() >= 2 && distinct.len() == t.labels.len(), "{lo}..{hi} {scale:?}: {:?}", t.labels);
        }
    }
    assert_eq!(labels(Scale::Linear, -0.2, 5.3), ["0", "1", "2", "3", "4", "5"]);
    assert_eq!(labels(Scale::Linear, 3.64, 3.75), ["3.64", "3.66", "3.68", "3.70", "3.72", "3.74"]);
}

#[test]
fn ema_is_tensorboards_debiased_average() {
    use keel::plot::ema;
    // A constant stays exactly constant.
    assert_eq!(ema(&[2.5; 50], 0.6), vec![2.5; 50]);
    // Weight 0: the raw values.
    assert_eq!(ema(&[1.0, 3.0, 2.0], 0.0), [1.0, 3.0, 2.0]);
    // A step from 0 to 1 after k values: y_t = (1 - W^(t-k)) / (1 - W^t) for t > k, from
    // last_t = (1 - W) sum_{i=k+1..t} W^(t-i) divided by the debias 1 - W^t.
    let (w, k) = (0.6f64, 3i32);
    let x: Vec<f64> = (1..=20).map(|t| if t <= k { 0.0 } else { 1.0 }).collect();
    for (t, y) in (1..=20).zip(ema(&x, w)) {
        let want = if t <= k { 0.0 } else { (1.0 - w.powi(t - k)) / (1.0 - w.powi(t)) };
        assert!((y - want).abs() < 1e-12, "t={t}: {y} vs {want}");
    }
    // The first value is the input's (the debias undoes the start from 0).
    assert!((ema(&[4.0, 1.0], 0.9)[0] - 4.0).abs() < 1e-12);
    // A non-finite value passes through without entering the average.
    let y = ema(&[1.0, f64::NAN, 3.0], 0.5);
    assert!(y[1].is_nan());
    assert!((y[2] - (0.5 * 0.5 * 1.0 + 0.5 * 3.0) / (1.0 - 0.25)).abs() < 1e-12);
}

/// Validation loss (eval.csv) is drawn beside the training loss, in the run's colour; --smooth
/// adds the EMA over a faint raw curve; a weight outside [0, 1) is refused.
#[test]
fn validation_beside_training_and_smoothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    run(&d.join("a"), "keel", 4, 60, 60, &[20, 40, 60]);
    run(&d.join("b"), "pre_ln", 4, 60, 60, &[30, 60]);
    let out = keel_plot(d, &["a", "b", "--out", "figs"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(d.join("figs/loss.svg")).unwrap();
    let texts = svg_texts(&svg);
    assert!(texts.iter().any(|t| t == "validation loss"), "{texts:?}");
    assert!(texts.iter().any(|t| t == "training and validation loss"), "{texts:?}");
    // Each validation point an open circle (white fill and coloured ring), and the legend's.
    assert_eq!(svg.matches("<circle").count(), 2 * (3 + 2) + 2, "one marker per eval.csv row");
    let out = keel_plot(d, &["a", "b", "--smooth", "0.6", "--out", "smooth"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let texts = svg_texts(&std::fs::read_to_string(d.join("smooth/loss.svg")).unwrap());
    for t in ["training loss, EMA 0.6", "training loss, raw"] {
        assert!(texts.iter().any(|x| x == t), "{t}: {texts:?}");
    }
    for bad in ["1", "-0.1", "1.5"] {
        let out = keel_plot(d, &["a", &format!("--smooth={bad}"), "--out", "bad"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("--smooth") && err.contains("below 1"), "{err}");
        assert!(!d.join("bad").exists());
    }
}

/// `keel plot SWEEP` while the sweep runs: the runs with data are drawn (summary figure: the
/// finished ones; loss figure: every run with a step), and stderr names the runs not finished,
/// with why: running (the PID holding the lock), stopped (resumable or not), no step yet.
#[test]
fn a_sweep_plotted_while_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let sw = tmp.path().join("sw");
    run(&sw.join("d4-keel"), "keel", 4, 40, 40, &[20, 40]);
    finish(&sw.join("d4-keel"), 40);
    run(&sw.join("d4-pre_ln"), "pre_ln", 4, 40, 25, &[20]);
    run(&sw.join("d8-keel"), "keel", 8, 40, 12, &[]);
    std::fs::create_dir_all(sw.join("d8-keel/checkpoints/step_0000010")).unwrap();
    write(&sw.join("d8-pre_ln/config.toml"), "[model]\nplacement = \"pre_ln\"\ndepth = 8\n[train]\nsteps = 40\n");
    write(&sw.join("d8-pre_ln/metrics.csv"), "step,tokens,lr,loss,grad_norm,tokens_per_s,elapsed_s\n");
    std::fs::create_dir_all(sw.join(".configs")).unwrap();
    // d4-pre_ln is being trained: this process holds its lock, and its last row is half written.
    let lock = std::fs::File::create(sw.join("d4-pre_ln/.keel.lock")).unwrap();
    lock.try_lock().unwrap();
    std::fs::write(sw.join("d4-pre_ln/.keel.lock"), format!("{}\n", std::process::id())).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(sw.join("d4-pre_ln/metrics.csv")).unwrap();
    std::io::Write::write_all(&mut f, b"26,1664,1e-3,4.").unwrap();
    // No summary.csv yet: the loss curves so far.
    let out = keel_plot(tmp.path(), &["sw", "--out", "early"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        tmp.path().join("early/loss-sw.png").exists() && !tmp.path().join("early/depth_final_val_loss.png").exists()
    );
    assert!(err.contains("no summary.csv or stress.csv yet"), "{err}");
    // summary.csv with the one finished run, as the sweep writes it.
    let mut summary = String::from(keel::sweep::SUMMARY_HEADER);
    summary.push_str("\nd4-keel,keel,4,2,32,4,0.003,0,1000,1000,2.5,2.7,10,,100,1,50\n");
    write(&sw.join("summary.csv"), &summary);
    let out = keel_plot(tmp.path(), &["sw", "--out", "figs"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    check_png(&tmp.path().join("figs/depth_final_val_loss.png"));
    check_png(&tmp.path().join("figs/loss-sw.png"));
    let pid = std::process::id();
    for needle in [
        "loss-sw: 3 of 4 runs drawn; not finished:".to_string(),
        format!("d4-pre_ln (running as PID {pid}, at step 25 of 40)"),
        "d8-keel (stopped at step 12 of 40, resumable from step 10)".into(),
        "d8-pre_ln (started, no step logged yet: not drawn)".into(),
        "depth_final_val_loss: drawn from sw/summary.csv (1 run so far); not finished: d4-pre_ln, d8-pre_ln, d8-keel"
            .into(),
    ] {
        assert!(err.contains(&needle), "stderr lacks {needle:?}:\n{err}");
    }
    assert!(!err.contains("d4-keel ("), "a finished run is not listed: {err}");
    let texts = svg_texts(&std::fs::read_to_string(tmp.path().join("figs/loss-sw.svg")).unwrap());
    for t in ["d4-keel", "d4-pre_ln (running)", "d8-keel (not finished)"] {
        assert!(texts.iter().any(|x| x == t), "{t}: {texts:?}");
    }
    assert!(!texts.iter().any(|x| x.starts_with("d8-pre_ln")), "a run without a step is not in the legend");
    // A finished run summary.csv does not list yet is said too.
    finish(&sw.join("d8-keel"), 40);
    let err = String::from_utf8_lossy(&keel_plot(tmp.path(), &["sw", "--out", "figs"]).stderr).to_string();
    assert!(
        err.contains("finished but not in summary.csv yet: d8-keel (`keel sweep --collect --out sw` adds them)"),
        "{err}"
    );
    drop(lock);
    // A folder whose runs have no step yet: nothing to draw, exit 2, nothing written.
    write(&tmp.path().join("empty/d4-keel/config.toml"), "[model]\nplacement = \"keel\"\n");
    let out = keel_plot(tmp.path(), &["empty", "--out", "none"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("nothing to draw yet") && err.contains("d4-keel (started, no step logged yet"), "{err}");
    assert!(!tmp.path().join("none").exists());
}
