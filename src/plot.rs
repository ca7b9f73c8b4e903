//! The paper's figures from keel's CSVs, as PNG and SVG (plotters; no Python); `keel plot` and
//! `keel eval --bench layer-removal` draw through it.
//!
//! What each input gives:
//! - a run directory (metrics.csv): loss against step for all runs given (Figure 1a style; the
//!   divergence step marked with a cross), and per-sub-layer gradient norms against depth index
//!   at chosen steps, log-y (from grad_norms.csv);
//! - a sweep directory (summary.csv): a summary column against depth per placement, log2 x-axis
//!   (Figure 1c style);
//! - a stress directory (stress.csv): maximum tolerable LR against depth per placement (Table 1);
//! - a probe CSV (`keel probe --out`): input-gradient norm against sub-layer per placement and depth;
//! - layer-removal studies (`keel eval --bench layer-removal` folders): perplexity increase against
//!   the removed sub-layer, one line per study (Figure 6).
//!
//! Colours are fixed per placement across figures. Text needs a TrueType font (plotters lays out
//! SVG text with its metrics too): keel uses `KEEL_FONT` or the first DejaVu/Liberation font in the
//! usual system folders.

use crate::files::write_all_atomic;
use crate::placement::Placement;
use crate::run_dir::RunDir;
use crate::InputError;
use anyhow::Result;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// How an axis maps data: values are transformed before plotting and ticks labelled back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    Linear,
    Log10,
    Log2,
}

impl Scale {
    fn to_axis(self, v: f64) -> Option<f64> {
        let t = match self {
            Scale::Linear => v,
            Scale::Log10 => v.log10(),
            Scale::Log2 => v.log2(),
        };
        t.is_finite().then_some(t)
    }

    fn label(self, t: f64) -> String {
        match self {
            Scale::Linear => format!("{t:.3}").trim_end_matches('0').trim_end_matches('.').to_string(),
            Scale::Log10 => format!("{:.1e}", 10f64.powf(t)),
            Scale::Log2 => format!("{:.0}", 2f64.powf(t)),
        }
    }
}

pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
    /// A point to mark with a cross (a divergence).
    pub marker: Option<(f64, f64)>,
    pub line: Line,
}

/// How a series is stroked: a measurement solid; predictions dashed or dotted, without points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Solid,
    Dashed,
    Dotted,
}

pub struct Figure {
    pub name: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub series: Vec<Series>,
}

/// One colour per placement, the same in every figure ([`Placement::color`]); grey for a label
/// that names no placement.
pub fn placement_color(placement: &str) -> RGBColor {
    match Placement::parse(placement) {
        Ok(p) => {
            let (r, g, b) = p.color();
            RGBColor(r, g, b)
        }
        Err(_) => RGBColor(127, 127, 127),
    }
}

/// A distinct colour for the i-th series that is not a placement.
fn nth_color(i: usize) -> RGBColor {
    const P: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(23, 190, 207),
    ];
    P[i % P.len()]
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |err: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing {}: {err}", fig.name);
    root.fill(&WHITE).map_err(e)?;
    let pts: Vec<(f64, f64)> = fig
        .series
        .iter()
        .flat_map(|s| s.points.iter().chain(s.marker.iter()))
        .filter_map(|&(x, y)| Some((fig.x_scale.to_axis(x)?, fig.y_scale.to_axis(y)?)))
        .collect();
    if pts.is_empty() {
        return Err(InputError(format!("figure {}: no finite points to plot", fig.name)).into());
    }
    let range = |vals: Vec<f64>| {
        let (lo, hi) = vals.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let pad = ((hi - lo) * 0.05).max(1e-9);
        (lo - pad)..(hi + pad)
    };
    let (xr, yr) = (range(pts.iter().map(|p| p.0).collect()), range(pts.iter().map(|p| p.1).collect()));
    let mut chart = ChartBuilder::on(&root)
        .caption(&fig.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(xr, yr)
        .map_err(e)?;
    let (xs, ys) = (fig.x_scale, fig.y_scale);
    // On a log2 axis, one label per power of two (plotters then picks the integers).
    let x_labels = match xs {
        Scale::Log2 => (chart.x_range().end.floor() - chart.x_range().start.ceil() + 1.0).clamp(2.0, 12.0) as usize,
        _ => 10,
    };
    chart
        .configure_mesh()
        .x_labels(x_labels)
        .x_desc(fig.x_label.as_str())
        .y_desc(fig.y_label.as_str())
        .x_label_formatter(&|v| xs.label(*v))
        .y_label_formatter(&|v| ys.label(*v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    for s in &fig.series {
        let line: Vec<(f64, f64)> =
            s.points.iter().filter_map(|&(x, y)| Some((xs.to_axis(x)?, ys.to_axis(y)?))).collect();
        let color = s.color;
        if s.line != Line::Solid {
            let (dash, gap) = if s.line == Line::Dashed { (6, 4) } else { (2, 4) };
            chart
                .draw_series(DashedLineSeries::new(line.clone(), dash, gap, color.stroke_width(2)))
                .map_err(e)?
                .label(s.label.as_str())
                // The legend's sample stroked like the line (18 px: two dashes, or four dots).
                .legend(move |(x, y)| {
                    DashedPathElement::new(vec![(x, y), (x + 20, y)], dash, gap, color.stroke_width(2))
                });
            continue;
        }
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if line.len() <= 40 {
            chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(e)?;
        }
        if let Some(m) = s.marker.and_then(|(x, y)| Some((xs.to_axis(x)?, ys.to_axis(y)?))) {
            chart.draw_series(std::iter::once(Cross::new(m, 7, color.stroke_width(3)))).map_err(e)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Registers a TrueType font for PNG text (once).
fn ensure_font() -> Result<()> {
    static FONT: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("KEEL_FONT").map(PathBuf::from).into_iter().collect();
        for p in [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/Library/Fonts/Arial.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
        ] {
            candidates.push(p.into());
        }
        for c in candidates {
            if let Ok(bytes) = std::fs::read(&c) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err("figures need a TrueType font and none was found: install one (Debian: apt-get install fonts-dejavu-core) or point KEEL_FONT at a .ttf file".into())
    })
    .clone()
    .map_err(|m| InputError(m).into())
}

/// Every figure's size in pixels.
const SIZE: (u32, u32) = (960, 600);

/// `fig` drawn in memory, as `NAME.png` and `NAME.svg` with their bytes: a figure that fails
/// half-way (nothing finite to plot) is an error, never a blank file.
pub fn draw(fig: &Figure) -> Result<Vec<(String, Vec<u8>)>> {
    use image::ImageEncoder;
    // Both backends lay text out with the font's metrics.
    ensure_font()?;
    let mut svg = String::new();
    render(SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(), fig)?;
    let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
    render(BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area(), fig)?;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, SIZE.0, SIZE.1, image::ColorType::Rgb8)
        .map_err(|e| anyhow::anyhow!("encoding {}.png: {e}", fig.name))?;
    Ok(vec![(format!("{}.png", fig.name), png), (format!("{}.svg", fig.name), svg.into_bytes())])
}

/// Writes `figs` as OUT/NAME.png and OUT/NAME.svg, making `out` if needed, only once every figure
/// is drawn, and all files at once ([`write_all_atomic`]): a plot that fails leaves no new file,
/// and no folder it made.
pub fn write(figs: &[Figure], out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for fig in figs {
        files.extend(draw(fig)?.into_iter().map(|(name, bytes)| (out.join(name), bytes)));
    }
    // The folders this call makes, innermost first, to be removed again if the writes fail.
    let made: Vec<&Path> = out.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).collect();
    std::fs::create_dir_all(out).map_err(|e| InputError(format!("cannot create {}: {e}", out.display())))?;
    if let Err(e) = write_all_atomic(&files) {
        for dir in &made {
            let _ = std::fs::remove_dir(dir);
        }
        return Err(anyhow::Error::new(e).context(format!("writing figures into {}", out.display())));
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
}

/// The header and rows of a CSV file; a malformed one is bad input naming the file and line.
fn records(path: &Path) -> Result<(csv::StringRecord, Vec<csv::StringRecord>)> {
    let file =
        crate::files::open_regular(path).map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
    let mut rd = csv::Reader::from_reader(file);
    let header = rd.headers().map_err(|e| malformed(path, &e))?.clone();
    let rows = rd.records().collect::<Result<Vec<_>, _>>().map_err(|e| malformed(path, &e))?;
    Ok((header, rows))
}

fn malformed(path: &Path, e: &csv::Error) -> InputError {
    let line = e.position().map(|p| format!(", line {}", p.line())).unwrap_or_default();
    let what = match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("{len} fields where the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { .. } => "not UTF-8".into(),
        _ => e.to_string(),
    };
    InputError(format!(
        "{}{line}: {what}\n  the file is damaged: fix or delete that line, or regenerate the file",
        path.display()
    ))
}

/// Every cell of columns `cols` is empty (no value) or a number; else bad input naming the file,
/// line and column.
fn numbers(file: &Path, header: &csv::StringRecord, rows: &[csv::StringRecord], cols: &[usize]) -> Result<()> {
    for r in rows {
        for &i in cols {
            let v = r.get(i).unwrap_or("").trim();
            if !v.is_empty() && v.parse::<f64>().is_err() {
                let line = r.position().map(|p| format!(", line {}", p.line())).unwrap_or_default();
                return Err(InputError(format!(
                    "{}{line}: `{v}` in column {} is not a number\n  the file is damaged: fix or delete that line, or regenerate the file",
                    file.display(),
                    header.get(i).unwrap_or("?")
                ))
                .into());
            }
        }
    }
    Ok(())
}

fn col(header: &csv::StringRecord, name: &str, file: &Path) -> Result<usize> {
    header.iter().position(|h| h == name).ok_or_else(|| {
        InputError(format!(
            "{} has no column `{name}` (columns: {})",
            file.display(),
            header.iter().collect::<Vec<_>>().join(", ")
        ))
        .into()
    })
}

fn num(r: &csv::StringRecord, i: usize) -> f64 {
    r.get(i).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

fn placement_of(run: &Path) -> String {
    RunDir::at(run).placement().map(|p| p.to_string()).unwrap_or_default()
}

/// Loss against step for several runs, divergence marked.
pub fn loss_figure(runs: &[PathBuf], log_x: bool) -> Result<Figure> {
    let mut series = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let file = RunDir::at(run).metrics();
        let (h, rows) = records(&file)?;
        let (s, l) = (col(&h, "step", &file)?, col(&h, "loss", &file)?);
        numbers(&file, &h, &rows, &[s, l])?;
        let points: Vec<(f64, f64)> = rows.iter().map(|r| (num(r, s), num(r, l))).filter(|p| p.1.is_finite()).collect();
        let marker = RunDir::at(run)
            .read_summary()
            .and_then(|s| s.diverged_at_step)
            .and_then(|k| points.iter().rev().find(|p| p.0 <= k as f64).copied());
        let placement = placement_of(run);
        let color = if runs.len() <= 6
            && !placement.is_empty()
            && runs.iter().filter(|r| placement_of(r) == placement).count() == 1
        {
            placement_color(&placement)
        } else {
            nth_color(i)
        };
        let name = run.file_name().and_then(|n| n.to_str()).unwrap_or("run").to_string();
        series.push(Series { label: name, color, points, marker, line: Line::Solid });
    }
    Ok(Figure {
        name: "loss".into(),
        title: "training loss".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        x_scale: if log_x { Scale::Log10 } else { Scale::Linear },
        y_scale: Scale::Linear,
        series,
    })
}

/// Per-sub-layer gradient norm against depth index (bottom = 0) at chosen steps, log-y.
pub fn grad_norm_figure(run: &Path, steps: &[usize]) -> Result<Figure> {
    let file = RunDir::at(run).grad_norms();
    let (h, rows) = records(&file)?;
    let (s, l, g) = (col(&h, "step", &file)?, col(&h, "layer", &file)?, col(&h, "grad_norm", &file)?);
    numbers(&file, &h, &rows, &[s, l, g])?;
    let mut available: Vec<usize> = rows.iter().filter_map(|r| r.get(s)?.parse().ok()).collect();
    available.dedup();
    let chosen: Vec<usize> = if steps.is_empty() {
        [available.first(), available.last()]
            .into_iter()
            .flatten()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    } else {
        steps.to_vec()
    };
    let series = chosen
        .iter()
        .enumerate()
        .map(|(i, &step)| Series {
            label: format!("step {step}"),
            color: nth_color(i),
            points: rows
                .iter()
                .filter(|r| r.get(s) == Some(&step.to_string()) && !r.get(l).unwrap_or("").is_empty())
                .map(|r| (num(r, l), num(r, g)))
                .collect(),
            marker: None,
            line: Line::Solid,
        })
        .collect();
    Ok(Figure {
        name: "grad_norms".into(),
        title: format!("per-sub-layer gradient norm ({})", run.display()),
        x_label: "sub-layer (0 = bottom)".into(),
        y_label: "gradient norm".into(),
        x_scale: Scale::Linear,
        y_scale: Scale::Log10,
        series,
    })
}

fn by_placement(rows: &[csv::StringRecord], p: usize, x: usize, y: usize) -> Vec<Series> {
    let mut names: Vec<String> = rows.iter().filter_map(|r| r.get(p).map(String::from)).collect();
    names.dedup();
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
        .into_iter()
        .map(|name| {
            let mut points: Vec<(f64, f64)> =
                rows.iter().filter(|r| r.get(p) == Some(name.as_str())).map(|r| (num(r, x), num(r, y))).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { color: placement_color(&name), label: name, points, marker: None, line: Line::Solid }
        })
        .collect()
}

/// A summary.csv column against another on a log2 axis: against depth (Figure 1c style), one
/// line per placement; against any other column (`alpha` for an ablation), one line per
/// placement and depth, rows without a value there left out.
pub fn summary_figure(sweep: &Path, column: &str, against: &str) -> Result<Figure> {
    let file = sweep.join("summary.csv");
    let (h, rows) = records(&file)?;
    let (p, x, y) = (col(&h, "placement", &file)?, col(&h, against, &file)?, col(&h, column, &file)?);
    numbers(&file, &h, &rows, &[x, y])?;
    let (series, name) = if against == "depth" {
        (by_placement(&rows, p, x, y), format!("depth_{column}"))
    } else {
        let d = col(&h, "depth", &file)?;
        let rows: Vec<_> = rows.into_iter().filter(|r| num(r, x).is_finite()).collect();
        let mut keys: Vec<(String, usize)> =
            rows.iter().map(|r| (r.get(p).unwrap_or("").to_string(), num(r, d) as usize)).collect();
        // Unique (placement, depth) pairs, depth-major; rows of one pair need not be adjacent.
        keys.sort_by_key(|(_, depth)| *depth);
        let mut seen = std::collections::BTreeSet::new();
        keys.retain(|k| seen.insert(k.clone()));
        let shared = keys.len() > keys.iter().map(|k| &k.0).collect::<std::collections::BTreeSet<_>>().len();
        let series = keys
            .iter()
            .enumerate()
            .map(|(i, (pl, depth))| {
                let mut points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.get(p) == Some(pl.as_str()) && num(r, d) as usize == *depth)
                    .map(|r| (num(r, x), num(r, y)))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                // Depths of one placement told apart by colour.
                let color = if shared { nth_color(i) } else { placement_color(pl) };
                Series { label: format!("{pl} L={depth}"), color, points, marker: None, line: Line::Solid }
            })
            .collect();
        (series, format!("{column}_vs_{against}"))
    };
    Ok(Figure {
        name,
        title: format!("{column} against {against}"),
        x_label: if against == "depth" { "depth (sub-layers)".into() } else { against.into() },
        y_label: column.into(),
        x_scale: Scale::Log2,
        y_scale: Scale::Linear,
        series,
    })
}

/// Maximum tolerable LR against depth per placement (Table 1), from stress.csv.
pub fn max_lr_figure(stress: &Path) -> Result<Figure> {
    let file = stress.join("stress.csv");
    let (h, rows) = records(&file)?;
    let (p, d, y) = (col(&h, "placement", &file)?, col(&h, "depth", &file)?, col(&h, "max_lr", &file)?);
    numbers(&file, &h, &rows, &[d, y])?;
    let series = by_placement(&rows, p, d, y);
    Ok(Figure {
        name: "max_lr".into(),
        title: "maximum tolerable learning rate".into(),
        x_label: "depth (sub-layers)".into(),
        y_label: "max LR".into(),
        x_scale: Scale::Log2,
        y_scale: Scale::Log10,
        series,
    })
}

/// Input-gradient norm against sub-layer, one line per placement and depth, from a probe CSV;
/// with the `predicted_from_branches` and `predicted_from_sums` columns (keel since the
/// trained-run probe), those predictions beside each line, dashed and dotted.
pub fn probe_figure(csv_path: &Path) -> Result<Figure> {
    let (h, rows) = records(csv_path)?;
    let (p, d, l, g) = (
        col(&h, "placement", csv_path)?,
        col(&h, "depth", csv_path)?,
        col(&h, "layer", csv_path)?,
        col(&h, "input_grad_ratio", csv_path)?,
    );
    numbers(csv_path, &h, &rows, &[l, g])?;
    let from_branches = h.iter().position(|c| c == "predicted_from_branches");
    let from_sums = h.iter().position(|c| c == "predicted_from_sums");
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in &rows {
        let k = (r.get(p).unwrap_or("").to_string(), r.get(d).unwrap_or("").to_string());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut series = Vec::new();
    for (pl, dp) in &keys {
        let of = || rows.iter().filter(|r| r.get(p) == Some(pl.as_str()) && r.get(d) == Some(dp.as_str()));
        series.push(Series {
            label: format!("{pl} L={dp}"),
            color: placement_color(pl),
            points: of().map(|r| (num(r, l), num(r, g))).collect(),
            marker: None,
            line: Line::Solid,
        });
        // Empty where the placement has no prediction (HybridNorm); absent in CSVs made before it.
        for (column, line, what) in [(from_branches, Line::Dashed, "branches"), (from_sums, Line::Dotted, "sums")] {
            let Some(c) = column else { continue };
            let points: Vec<(f64, f64)> =
                of().filter_map(|r| Some((num(r, l), r.get(c)?.parse::<f64>().ok()?))).collect();
            if !points.is_empty() {
                series.push(Series {
                    label: format!("{pl} L={dp} predicted from {what}"),
                    color: placement_color(pl),
                    points,
                    marker: None,
                    line,
                });
            }
        }
    }
    // One figure per probe CSV: named after the file (probe.csv -> probe, p30.csv -> probe-p30).
    let stem = csv_path.file_stem().and_then(|s| s.to_str()).unwrap_or("probe");
    Ok(Figure {
        name: if stem == "probe" { "probe".into() } else { format!("probe-{stem}") },
        title: "gradient ratio to the top sub-layer (dashed: predicted from branches, dotted: from sums)".into(),
        x_label: "sub-layer (0 = bottom)".into(),
        y_label: "gradient ratio".into(),
        x_scale: Scale::Linear,
        y_scale: Scale::Log10,
        series,
    })
}

/// Perplexity increase against the removed sub-layer, one line per study (the paper's Figure 6),
/// from `keel eval --bench layer-removal` folders or their layer_removal.csv files.
pub fn layer_removal_figure(inputs: &[PathBuf]) -> Result<Figure> {
    let mut series = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let (file, dir) = if input.is_dir() {
            (input.join("layer_removal.csv"), input.clone())
        } else {
            (input.clone(), input.parent().map(Path::to_path_buf).unwrap_or_default())
        };
        let (h, rows) = records(&file)?;
        let (l, d) = (col(&h, "sublayer", &file)?, col(&h, "delta_perplexity", &file)?);
        numbers(&file, &h, &rows, &[l, d])?;
        let placement = crate::files::read_to_string(&dir.join(crate::run_dir::RESULTS))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("placement").and_then(|p| p.as_str()).map(String::from))
            .unwrap_or_else(|| format!("study {}", i + 1));
        let color = if placement.starts_with("study") { nth_color(i) } else { placement_color(&placement) };
        let points = rows.iter().map(|r| (num(r, l), num(r, d))).filter(|p| p.0 >= 0.0).collect();
        series.push(Series { label: placement, color, points, marker: None, line: Line::Solid });
    }
    Ok(Figure {
        name: "layer_removal".into(),
        title: "perplexity increase when one sub-layer is removed".into(),
        x_label: "removed sub-layer (0 = bottom)".into(),
        y_label: "delta perplexity".into(),
        x_scale: Scale::Linear,
        y_scale: Scale::Linear,
        series,
    })
}

/// What `keel plot` draws besides the inputs themselves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Log-scale steps on the loss figure.
    pub log_x: bool,
    /// The summary.csv column drawn ...
    pub column: String,
    /// ... against this one (depth unless told).
    pub against: String,
    /// Steps of grad_norms.csv to draw (empty: the first and the last).
    pub steps: Vec<usize>,
}

/// The figures for `paths`, each recognised by what it holds: run directories (one loss figure
/// for all of them, and the gradient norms of the first with rows), sweeps, stress folders,
/// layer-removal studies (one figure for all) and probe CSVs.
pub fn figures(paths: &[PathBuf], opts: &Options) -> Result<Vec<Figure>> {
    let mut runs = Vec::new();
    let mut figures = Vec::new();
    let mut removal = Vec::new();
    for p in paths {
        if p.join("layer_removal.csv").exists() || p.file_name().is_some_and(|n| n == "layer_removal.csv") {
            removal.push(p.clone());
        } else if p.is_file() {
            figures.push(probe_figure(p)?);
        } else if RunDir::at(p).metrics().exists() {
            runs.push(p.clone());
        } else if p.join("summary.csv").exists() {
            figures.push(summary_figure(p, &opts.column, &opts.against)?);
        } else if p.join("stress.csv").exists() {
            figures.push(max_lr_figure(p)?);
        } else {
            return Err(InputError(format!(
                "{} is neither a run directory (metrics.csv), a sweep (summary.csv), a stress folder (stress.csv), a layer-removal study (layer_removal.csv) nor a probe CSV",
                p.display()
            ))
            .into());
        }
    }
    if !removal.is_empty() {
        figures.push(layer_removal_figure(&removal)?);
    }
    if !runs.is_empty() {
        figures.push(loss_figure(&runs, opts.log_x)?);
        let has_rows = |r: &PathBuf| {
            crate::files::read_to_string(&RunDir::at(r).grad_norms()).is_ok_and(|t| t.lines().count() > 1)
        };
        if let Some(run) = runs.iter().find(|r| has_rows(r)) {
            figures.push(grad_norm_figure(run, &opts.steps)?);
        }
    }
    Ok(figures)
}
