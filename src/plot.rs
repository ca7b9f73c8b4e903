//! The paper's figures from keel's CSVs, as PNG and SVG (plotters; no Python); `keel plot` and
//! `keel eval --bench layer-removal` draw through it.
//!
//! What each input gives:
//! - run directories (metrics.csv): loss against step for all runs given (Figure 1a style; the
//!   divergence step marked with a cross), validation loss (eval.csv) beside each, an optional
//!   TensorBoard-style EMA of the training loss; and per-sub-layer gradient norms against depth
//!   index at chosen steps, log-y (from grad_norms.csv), every run that has them;
//! - a sweep directory (summary.csv): a summary column against depth per placement, log2 x-axis
//!   (Figure 1c style);
//! - a stress directory (stress.csv): maximum tolerable LR against depth per placement (Table 1),
//!   runs that survived the whole ramp marked as lower bounds;
//! - a sweep's or stress grid's folder, finished or not: the loss curves of every run in it with
//!   data so far, and a note naming the runs that have not finished;
//! - a probe CSV (`keel probe --out`): input-gradient norm against sub-layer per placement and depth;
//! - layer-removal studies (`keel eval --bench layer-removal` folders): perplexity increase against
//!   the removed sub-layer, one line per study (Figure 6).
//!
//! Colours are fixed per placement across figures (depths of one placement in shades of its
//! colour). Legends sit in a column right of the plot, never over data; log axes are labelled
//! 1, 10, 100, 0.01 (1e-5 beyond). Text needs a TrueType font (plotters lays out SVG text with
//! its metrics too): keel uses `KEEL_FONT` or the first DejaVu/Liberation font in the usual
//! system folders.

use crate::files::write_all_atomic;
use crate::placement::Placement;
use crate::run_dir::RunDir;
use crate::InputError;
use anyhow::Result;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

/// How an axis maps data: values are transformed before plotting and ticks labelled back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    Linear,
    Log10,
    Log2,
}

impl Scale {
    /// `v` in axis units (its logarithm on a log axis); `None` where the axis cannot show it.
    pub fn to_axis(self, v: f64) -> Option<f64> {
        let t = match self {
            Scale::Linear => v,
            Scale::Log10 => v.log10(),
            Scale::Log2 => v.log2(),
        };
        t.is_finite().then_some(t)
    }

    fn value_at(self, t: f64) -> f64 {
        match self {
            Scale::Linear => t,
            Scale::Log10 => 10f64.powf(t),
            Scale::Log2 => 2f64.powf(t),
        }
    }
}

/// `v` rounded to `sig` significant digits, written plainly (0.05, 31.6, 1000) between 1e-3 and
/// 1e5 and as `2.5e-5` / `1e6` outside.
fn number(v: f64, sig: usize) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { v.to_string() };
    }
    let sig = sig.max(1);
    // Rounded first, so that 0.000999999 (10^-3 computed) counts as 0.001.
    let r: f64 = format!("{:.*e}", sig - 1, v).parse().unwrap_or(v);
    let a = r.abs();
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if (1e-3..1e5).contains(&a) {
        let decimals = (sig as i32 - 1 - a.log10().floor() as i32).max(0) as usize;
        trim(format!("{r:.decimals$}"))
    } else {
        let s = format!("{:.*e}", sig - 1, r);
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        format!("{}e{exp}", trim(mantissa.to_string()))
    }
}

/// A tick label as a reader writes the number: 1, 10, 100, 0.1, 0.01, 0.05, 31.6, and `1e-5` or
/// `2e6` only beyond 1e-3..1e5 (at most four significant digits).
pub fn tick_label(v: f64) -> String {
    number(v, 4)
}

/// Labels for `values`: the fewest significant digits (up to 4) that write each exactly (16 as
/// 16, not 20), more (up to 6) where that is needed to tell them apart.
fn distinct_labels(values: &[f64]) -> Vec<String> {
    let exact = |sig: usize| {
        values.iter().all(|&v| number(v, sig).parse::<f64>().is_ok_and(|r| (r - v).abs() <= 1e-9 * v.abs()))
    };
    let first = (1..=4).find(|&sig| exact(sig)).unwrap_or(4);
    let mut labels = Vec::new();
    for sig in first..=6 {
        labels = values.iter().map(|&v| number(v, sig)).collect();
        let mut seen = std::collections::BTreeSet::new();
        if labels.iter().all(|l| seen.insert(l.clone())) {
            break;
        }
    }
    labels
}

/// An axis's tick marks, in axis units (see [`Scale::to_axis`]): labelled ticks with their
/// labels, and the unlabelled minor ones that draw the light grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticks {
    pub major: Vec<f64>,
    pub minor: Vec<f64>,
    pub labels: Vec<String>,
}

impl Ticks {
    fn label_of(&self, t: f64) -> String {
        self.major
            .iter()
            .zip(&self.labels)
            .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }
}

/// A step of 1, 2 or 5 times a power of ten that cuts `span` into about `target` pieces.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let m = [1.0, 2.0, 5.0, 10.0].into_iter().find(|&m| raw / mag <= m * (1.0 + 1e-9)).unwrap_or(10.0);
    m * mag
}

/// The multiples of `step` within `lo..=hi`.
fn multiples(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let (a, b) = ((lo / step - 1e-9).ceil() as i64, (hi / step + 1e-9).floor() as i64);
    (a..=b).map(|k| k as f64 * step).collect()
}

/// Ticks for the axis range `lo..hi` (axis units) of a `scale` axis. A log axis is labelled at
/// powers of ten (of two for log2), else at 1, 2, 5 times them, else at 1 to 9 times them, else
/// like a linear axis; labels are never repeated.
pub fn ticks(scale: Scale, lo: f64, hi: f64) -> Ticks {
    let linear = |lo: f64, hi: f64| {
        let step = nice_step(hi - lo, 7.0);
        (multiples(lo, hi, step), multiples(lo, hi, step / 5.0), step)
    };
    let in_range = |t: &f64| *t >= lo - 1e-9 && *t <= hi + 1e-9;
    match scale {
        Scale::Linear => {
            let (major, minor, step) = linear(lo, hi);
            let big = major.iter().any(|v| v.abs() >= 1e6);
            let labels = if big {
                distinct_labels(&major)
            } else {
                let decimals = (-step.log10() - 1e-9).ceil().max(0.0) as usize;
                major.iter().map(|v| format!("{:.decimals$}", if v.abs() < step / 2.0 { 0.0 } else { *v })).collect()
            };
            Ticks { major, minor, labels }
        }
        Scale::Log10 | Scale::Log2 => {
            let base: f64 = if scale == Scale::Log10 { 10.0 } else { 2.0 };
            let (a, b) = ((lo - 1e-9).ceil() as i64, (hi + 1e-9).floor() as i64);
            let mut major: Vec<f64> = Vec::new();
            let mut minor: Vec<f64> = Vec::new();
            if b - a >= 2 || (scale == Scale::Log2 && b - a >= 1) {
                // At most about 8 labelled powers.
                let every = ((b - a + 1) as f64 / 8.0).ceil().max(1.0) as i64;
                major = (a..=b).filter(|k| k.rem_euclid(every) == 0).map(|k| k as f64).collect();
                if scale == Scale::Log10 && b - a < 7 {
                    minor = (lo.floor() as i64..=hi.ceil() as i64)
                        .flat_map(|k| (2..=9).map(move |m| k as f64 + (m as f64).log10()))
                        .filter(in_range)
                        .collect();
                } else {
                    minor = (a..=b).map(|k| k as f64).collect();
                }
            } else if scale == Scale::Log10 {
                let at = |ms: &[f64]| -> Vec<f64> {
                    (lo.floor() as i64..=hi.ceil() as i64)
                        .flat_map(|k| ms.iter().map(move |m| k as f64 + m.log10()))
                        .filter(in_range)
                        .collect()
                };
                let all: Vec<f64> = at(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
                for candidate in [at(&[1.0, 2.0, 5.0]), all.clone()] {
                    if candidate.len() >= 2 {
                        major = candidate;
                        minor = all.clone();
                        break;
                    }
                }
            }
            if major.len() < 2 {
                // A narrow range: evenly spaced values, placed on the log axis.
                let (vlo, vhi) = (scale.value_at(lo), scale.value_at(hi));
                let (values, _, _) = linear(vlo, vhi);
                major = values.iter().filter(|v| **v > 0.0).filter_map(|v| scale.to_axis(*v)).collect();
                minor = Vec::new();
            }
            let labels = distinct_labels(&major.iter().map(|t| base.powf(*t)).collect::<Vec<_>>());
            Ticks { major, minor, labels }
        }
    }
}

/// TensorBoard's scalar smoothing: an exponential moving average started from 0 and debiased,
/// as `classicSmoothing` in tensorboard/webapp/widgets/line_chart_v2/data_transformer.ts does
/// (TensorBoard's default weight is 0.6; W&B's "TensorBoard EMA" is the same):
///
/// ```text
/// last_t = W * last_(t-1) + (1 - W) * x_t,   last_0 = 0
/// y_t    = last_t / (1 - W^n_t)              (n_t: finite values so far)
/// ```
///
/// Dividing by 1 - W^n removes the pull towards the starting 0 (a constant c gives
/// last_t = c (1 - W^t)). Like TensorBoard, a constant series is returned as it is (no rounding
/// wobble), a non-finite value passes through without entering the average, and W = 0 returns
/// the input. `weight` must be in [0, 1).
pub fn ema(values: &[f64], weight: f64) -> Vec<f64> {
    let constant = values.iter().all(|v| Some(v) == values.first());
    if weight == 0.0 || constant {
        return values.to_vec();
    }
    let (mut last, mut n) = (0.0, 0);
    values
        .iter()
        .map(|&x| {
            if !x.is_finite() {
                return x;
            }
            last = last * weight + (1.0 - weight) * x;
            n += 1;
            last / (1.0 - weight.powi(n))
        })
        .collect()
}

/// One line of a figure.
pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
    /// A point to mark with a cross (a divergence).
    pub marker: Option<(f64, f64)>,
    pub line: Line,
    pub dots: Dots,
    /// Points that are lower bounds, not measurements (a stress run that survived the whole LR
    /// ramp): an open circle with an arrow up.
    pub lower_bounds: Vec<(f64, f64)>,
    /// Drawn thin and pale behind the others (the raw curve under its smoothed one).
    pub faint: bool,
    /// Has its own legend entry (a companion line, explained by the figure's keys, has not).
    pub in_legend: bool,
}

impl Series {
    /// A solid line with an entry in the legend.
    pub fn new(label: impl Into<String>, color: RGBColor, points: Vec<(f64, f64)>) -> Self {
        Series {
            label: label.into(),
            color,
            points,
            marker: None,
            line: Line::Solid,
            dots: Dots::Auto,
            lower_bounds: Vec::new(),
            faint: false,
            in_legend: true,
        }
    }

    fn draws_dots(&self) -> Dots {
        match self.dots {
            Dots::Auto if self.line == Line::Solid && !self.faint && self.points.len() <= 40 => Dots::Filled,
            Dots::Auto => Dots::None,
            d => d,
        }
    }
}

/// How a series is stroked: a measurement solid; predictions dashed or dotted, without points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Solid,
    Dashed,
    Dotted,
}

impl Line {
    fn dash(self) -> Option<(u32, u32)> {
        match self {
            Line::Solid => None,
            Line::Dashed => Some((6, 4)),
            Line::Dotted => Some((2, 4)),
        }
    }
}

/// Markers at a series' points: filled where a solid line has few points (`Auto`), open circles
/// for sparse measurements drawn beside a curve (validation loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dots {
    Auto,
    None,
    Filled,
    Open,
}

/// What a legend sample shows besides its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    None,
    Dot,
    Open,
    /// An open circle with an arrow up: a lower bound.
    LowerBound,
    Cross,
}

/// A legend entry that explains a style rather than naming a line (dashed: validation loss),
/// drawn in grey below the lines' own entries.
#[derive(Debug, Clone)]
pub struct Key {
    pub label: String,
    pub line: Option<Line>,
    pub mark: Mark,
    pub faint: bool,
}

impl Key {
    pub fn new(label: impl Into<String>, line: Option<Line>, mark: Mark) -> Self {
        Key { label: label.into(), line, mark, faint: false }
    }
}

pub struct Figure {
    pub name: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub series: Vec<Series>,
    /// Style explanations shown once, after the series' entries.
    pub keys: Vec<Key>,
    /// Shift the series a little apart along x, so that equal values stay visible side by side.
    pub dodge: bool,
}

impl Figure {
    fn new(name: impl Into<String>, title: impl Into<String>, x: &str, y: &str, scales: (Scale, Scale)) -> Self {
        Figure {
            name: name.into(),
            title: title.into(),
            x_label: x.into(),
            y_label: y.into(),
            x_scale: scales.0,
            y_scale: scales.1,
            series: Vec::new(),
            keys: Vec::new(),
            dodge: false,
        }
    }
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

/// `c` lightened (f > 0, towards white) or darkened (f < 0, towards black).
fn shade(c: RGBColor, f: f64) -> RGBColor {
    let ch = |v: u8| {
        let v = v as f64;
        (if f >= 0.0 { v + (255.0 - v) * f } else { v * (1.0 + f) }).round().clamp(0.0, 255.0) as u8
    };
    RGBColor(ch(c.0), ch(c.1), ch(c.2))
}

/// The placement's colour for the `rank`-th of `n` depths (shallowest first): lighter for the
/// shallow ones, darker for the deep, so that a depth sweep reads in one hue per placement.
fn depth_shade(placement: &str, rank: usize, n: usize) -> RGBColor {
    let c = placement_color(placement);
    if n <= 1 {
        return c;
    }
    shade(c, 0.5 - 0.85 * rank as f64 / (n - 1) as f64)
}

/// A distinct colour for the i-th series that is not a placement (matplotlib's tab10).
fn nth_color(i: usize) -> RGBColor {
    const P: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    P[i % P.len()]
}

/// Colours for labelled items given as (placement, depth): shades of the placement's colour by
/// depth when every (placement, depth) is distinct and names a placement, else tab10 by order.
fn colors_by_placement_depth(items: &[(String, usize)]) -> Vec<RGBColor> {
    let mut seen = std::collections::BTreeSet::new();
    let distinct = items.iter().all(|i| seen.insert(i.clone()));
    if !distinct || items.iter().any(|(p, _)| Placement::parse(p).is_err()) {
        return (0..items.len()).map(nth_color).collect();
    }
    items
        .iter()
        .map(|(p, d)| {
            let mut depths: Vec<usize> = items.iter().filter(|(q, _)| q == p).map(|(_, d)| *d).collect();
            depths.sort_unstable();
            depth_shade(p, depths.iter().position(|x| x == d).unwrap_or(0), depths.len())
        })
        .collect()
}

const KEY_GREY: RGBColor = RGBColor(90, 90, 90);

/// A legend row: a line sample, a mark, a label.
struct Entry {
    label: String,
    color: RGBColor,
    line: Option<Line>,
    mark: Mark,
    faint: bool,
    key: bool,
}

fn entries(fig: &Figure) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for s in fig.series.iter().filter(|s| s.in_legend) {
        if out.iter().any(|e| e.label == s.label) {
            continue;
        }
        let mark = match s.draws_dots() {
            Dots::Filled => Mark::Dot,
            Dots::Open => Mark::Open,
            _ => Mark::None,
        };
        out.push(Entry {
            label: s.label.clone(),
            color: s.color,
            line: Some(s.line),
            mark,
            faint: s.faint,
            key: false,
        });
    }
    for k in &fig.keys {
        out.push(Entry {
            label: k.label.clone(),
            color: KEY_GREY,
            line: k.line,
            mark: k.mark,
            faint: k.faint,
            key: true,
        });
    }
    out
}

/// The pixel range of values `vals` on an axis: padded by 5%; a single value (or all equal)
/// gets half a decade either side on a log axis, 10% on a linear one, so its ticks differ.
fn axis_range(scale: Scale, vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if hi - lo <= 1e-12 * hi.abs().max(1.0) {
        let pad = match scale {
            Scale::Log10 => 0.5,
            Scale::Log2 => 1.0,
            Scale::Linear if hi.abs() > 0.0 => hi.abs() * 0.1,
            Scale::Linear => 1.0,
        };
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

fn draw_mark<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    mark: Mark,
    (x, y): (i32, i32),
    color: RGBColor,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    match mark {
        Mark::None => Ok(()),
        Mark::Dot => area.draw(&Circle::new((x, y), 3, color.filled())),
        Mark::Open => {
            area.draw(&Circle::new((x, y), 4, WHITE.filled()))?;
            area.draw(&Circle::new((x, y), 4, color.stroke_width(2)))
        }
        Mark::LowerBound => {
            area.draw(&PathElement::new(vec![(x, y - 4), (x, y - 14)], color.stroke_width(2)))?;
            area.draw(&Polygon::new(vec![(x - 4, y - 11), (x + 4, y - 11), (x, y - 17)], color.filled()))?;
            area.draw(&Circle::new((x, y + 2), 4, WHITE.filled()))?;
            area.draw(&Circle::new((x, y + 2), 4, color.stroke_width(2)))
        }
        Mark::Cross => area.draw(&Cross::new((x, y), 5, color.stroke_width(2))),
    }
}

/// The legend in its own column, `area`, right of the plot: one row per series that has an
/// entry, then the style keys in grey; rows shrink to fit, and lines' entries that still cannot
/// fit are counted ("… and 12 more"), the keys always shown.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[Entry],
    top: i32,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (w, h) = area.dim_in_pixel();
    let (lines, keys): (Vec<&Entry>, Vec<&Entry>) = entries.iter().partition(|e| !e.key);
    let gap = if keys.is_empty() || lines.is_empty() { 0 } else { 8 };
    let room = (h as i32 - top - 10 - gap).max(20);
    let (mut size, mut row) = (14, 19);
    if entries.len() as i32 * row > room {
        (size, row) = (12, 15);
    }
    let fit = (room / row).max(1) as usize;
    let shown = if lines.len() + keys.len() > fit { fit.saturating_sub(keys.len() + 1) } else { lines.len() };
    let hidden = lines.len() - shown.min(lines.len());
    let font = ("sans-serif", size).into_font();
    let style = TextStyle::from(font.clone()).pos(Pos::new(HPos::Left, VPos::Center));
    let grey = style.color(&KEY_GREY);
    let mut y = top + row / 2;
    let rows = lines.iter().take(shown).map(Some).chain(std::iter::once(None)).chain(keys.iter().map(Some));
    for item in rows {
        let Some(e) = item else {
            if hidden > 0 {
                area.draw_text(&format!("… and {hidden} more"), &grey, (42, y))?;
                y += row;
            }
            y += gap;
            continue;
        };
        let color = if e.faint { e.color.mix(0.35) } else { e.color.to_rgba() };
        if let Some(line) = e.line {
            let pts = vec![(6, y), (34, y)];
            let st = ShapeStyle::from(color).stroke_width(if e.faint { 1 } else { 2 });
            match line.dash() {
                None => area.draw(&PathElement::new(pts, st))?,
                Some((dash, gap)) => area.draw(&DashedPathElement::new(pts, dash, gap, st))?,
            }
        }
        draw_mark(area, e.mark, (20, y), e.color)?;
        // A label too long for the column wraps at spaces, or is cut with an ellipsis.
        let fits =
            |l: &str| area.estimate_text_size(l, &TextStyle::from(font.clone())).is_ok_and(|(tw, _)| tw + 46 <= w);
        let mut rows_of: Vec<String> = Vec::new();
        for word in e.label.split(' ') {
            let (word, breaks) = match word.strip_suffix('\n') {
                Some(w) => (w, true),
                None => (word, false),
            };
            match rows_of.last_mut() {
                Some(last) if !last.is_empty() && fits(&format!("{last} {word}")) => *last = format!("{last} {word}"),
                _ => rows_of.push(word.to_string()),
            }
            if breaks {
                rows_of.push(String::new());
            }
        }
        rows_of.retain(|r| !r.is_empty());
        if rows_of.len() > 1 && !e.key {
            rows_of = vec![e.label.clone()];
        }
        for (k, mut label) in rows_of.into_iter().enumerate() {
            while label.chars().count() > 4 && !fits(&label) {
                let mut chars: Vec<char> = label.trim_end_matches('…').chars().collect();
                chars.pop();
                label = chars.into_iter().chain(['…']).collect();
            }
            if k > 0 {
                y += row - 3;
            }
            area.draw_text(&label, if e.key { &grey } else { &style }, (42, y))?;
        }
        y += row;
    }
    Ok(())
}

/// A linear coordinate over axis units whose grid and labels are [`Ticks`].
struct AxisCoord {
    lo: f64,
    hi: f64,
    ticks: Ticks,
}

impl Ranged for AxisCoord {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let f = (v - self.lo) / (self.hi - self.lo);
        limit.0 + ((limit.1 - limit.0) as f64 * f).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.ticks.minor.clone()
        } else {
            self.ticks.major.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |err: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing {}: {err}", fig.name);
    root.fill(&WHITE).map_err(e)?;
    let (xs, ys) = (fig.x_scale, fig.y_scale);
    let axis = |&(x, y): &(f64, f64)| Some((xs.to_axis(x)?, ys.to_axis(y)?));
    let pts: Vec<(f64, f64)> =
        fig.series.iter().flat_map(|s| s.points.iter().chain(s.marker.iter())).filter_map(axis).collect();
    if pts.is_empty() {
        return Err(InputError(format!("figure {}: no finite points to plot", fig.name)).into());
    }
    let (x0, x1) = axis_range(xs, pts.iter().map(|p| p.0));
    let (y0, mut y1) = axis_range(ys, pts.iter().map(|p| p.1));
    // Room above for the arrows of lower bounds.
    if fig.series.iter().any(|s| !s.lower_bounds.is_empty()) {
        y1 += (y1 - y0) * 0.08;
    }
    let (xt, yt) = (ticks(xs, x0, x1), ticks(ys, y0, y1));

    let legend = entries(fig);
    let text = TextStyle::from(("sans-serif", 14).into_font());
    let width_of = |label: &str| {
        label.split('\n').map(|l| root.estimate_text_size(l.trim(), &text).map_or(0, |(w, _)| w)).max().unwrap_or(0)
    };
    let widest = |keys: bool| legend.iter().filter(|en| en.key == keys).map(|en| width_of(&en.label)).max();
    // Style keys wrap (at spaces) rather than widen the column past the lines' own labels.
    let label_w = match (widest(false), widest(true)) {
        (Some(lines), Some(keys)) => lines.max(keys.min(170)),
        (lines, keys) => lines.or(keys).unwrap_or(0),
    };
    let (w, _) = root.dim_in_pixel();
    let legend_w = if legend.is_empty() { 0 } else { (label_w + 56).clamp(120, w * 2 / 5) };
    let (left, legend_area) = root.split_horizontally(w - legend_w);
    // The title centred over the plot; the legend's top level with the plot's.
    let body = left.titled(&fig.title, ("sans-serif", 20)).map_err(e)?;
    let title_h = left.dim_in_pixel().1 - body.dim_in_pixel().1;
    let plot_area = body;
    let mut chart = ChartBuilder::on(&plot_area)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            AxisCoord { lo: x0, hi: x1, ticks: xt.clone() },
            AxisCoord { lo: y0, hi: y1, ticks: yt.clone() },
        )
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(fig.x_label.as_str())
        .y_desc(fig.y_label.as_str())
        .x_label_formatter(&|v| xt.label_of(*v))
        .y_label_formatter(&|v| yt.label_of(*v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    let n = fig.series.len();
    for (i, s) in fig.series.iter().enumerate() {
        let dx = if fig.dodge && n > 1 { (i as f64 - (n - 1) as f64 / 2.0) * 0.012 * (x1 - x0) } else { 0.0 };
        let at = |p: &(f64, f64)| axis(p).map(|(x, y)| (x + dx, y));
        let line: Vec<(f64, f64)> = s.points.iter().filter_map(at).collect();
        let color = if s.faint { s.color.mix(0.35) } else { s.color.to_rgba() };
        let st = ShapeStyle::from(color).stroke_width(if s.faint { 1 } else { 2 });
        match s.line.dash() {
            None => chart.draw_series(LineSeries::new(line.clone(), st)).map_err(e)?,
            Some((dash, gap)) => chart.draw_series(DashedLineSeries::new(line.clone(), dash, gap, st)).map_err(e)?,
        };
        let bounds: Vec<(f64, f64)> = s.lower_bounds.iter().filter_map(at).collect();
        let is_bound = |p: &(f64, f64)| bounds.iter().any(|b| b == p);
        match s.draws_dots() {
            Dots::Filled => {
                chart
                    .draw_series(line.iter().filter(|p| !is_bound(p)).map(|&p| Circle::new(p, 3, s.color.filled())))
                    .map_err(e)?;
            }
            Dots::Open => {
                chart.draw_series(line.iter().map(|&p| Circle::new(p, 4, WHITE.filled()))).map_err(e)?;
                chart.draw_series(line.iter().map(|&p| Circle::new(p, 4, s.color.stroke_width(2)))).map_err(e)?;
            }
            _ => {}
        }
        let c = s.color;
        chart
            .draw_series(bounds.iter().map(|&p| {
                EmptyElement::at(p)
                    + PathElement::new(vec![(0, -5), (0, -20)], c.stroke_width(2))
                    + Polygon::new(vec![(-5, -16), (5, -16), (0, -24)], c.filled())
                    + Circle::new((0, 0), 5, WHITE.filled())
                    + Circle::new((0, 0), 5, c.stroke_width(2))
            }))
            .map_err(e)?;
        if let Some(m) = s.marker.as_ref().and_then(at) {
            chart.draw_series(std::iter::once(Cross::new(m, 7, s.color.stroke_width(3)))).map_err(e)?;
        }
    }
    if !legend.is_empty() {
        draw_legend(&legend_area, &legend, title_h as i32 + 15).map_err(e)?;
    }
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
    records_of(path, false)
}

/// [`records`], where `live` (a run being trained right now) lets the last line be one that is
/// still being written: without its newline, it is left out rather than refused.
fn records_of(path: &Path, live: bool) -> Result<(csv::StringRecord, Vec<csv::StringRecord>)> {
    let mut bytes = crate::files::read(path).map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
    if live && !bytes.ends_with(b"\n") {
        bytes.truncate(bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1));
    }
    let mut rd = csv::Reader::from_reader(bytes.as_slice());
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

/// What the figures need to know of a run directory besides its CSVs.
struct RunInfo {
    path: PathBuf,
    name: String,
    /// Empty when config.toml does not read.
    placement: String,
    depth: usize,
    planned_steps: Option<usize>,
    /// Where it stands (running, stopped, done, ...).
    status: crate::runs::Status,
    /// `DONE` is there (a finished run whose summary is damaged included).
    done: bool,
    /// The step `summary.json` says it diverged at.
    diverged_at: Option<usize>,
}

impl RunInfo {
    fn of(path: &Path) -> Self {
        let dir = RunDir::at(path);
        let config = dir.read_config().ok();
        let summary = dir.read_summary();
        RunInfo {
            path: path.to_path_buf(),
            name: dir_name(path),
            placement: config.as_ref().map(|c| c.model.placement.to_string()).unwrap_or_default(),
            depth: config.as_ref().map_or(0, |c| c.model.depth),
            planned_steps: config.as_ref().map(|c| c.train.steps),
            status: crate::runs::Status::from_parts(&dir, config.is_some(), summary.as_ref()),
            done: dir.is_done(),
            diverged_at: summary.and_then(|s| s.diverged_at_step),
        }
    }

    /// It has ended for good (`DONE`), finished or diverged (or with a damaged summary).
    fn is_finished(&self) -> bool {
        self.status.is_finished() || self.done
    }

    /// A live keel process is training it: its CSVs' last lines may be half-written.
    fn is_live(&self) -> bool {
        matches!(self.status, crate::runs::Status::Running(_))
    }

    /// Why the run is not finished, or `None` when it is (diverged runs included): running,
    /// stopped (resumable or not), or started with no step logged; `last_step` from its metrics.
    fn unfinished(&self, last_step: Option<usize>) -> Option<String> {
        use crate::runs::Status;
        let at = |k: usize| match self.planned_steps {
            Some(n) => format!("step {k} of {n}"),
            None => format!("step {k}"),
        };
        Some(match (&self.status, last_step) {
            _ if self.is_finished() => return None,
            (Status::Running(who), Some(k)) => format!("running as {who}, at {}", at(k)),
            (Status::Running(who), None) => format!("running as {who}, no step logged yet"),
            (Status::Stopped { checkpoint }, Some(k)) => {
                format!("stopped at {}, resumable from step {checkpoint}", at(k))
            }
            (_, Some(k)) => format!("stopped at {}, no checkpoint", at(k)),
            (_, None) => "started, no step logged yet".into(),
        })
    }
}

/// A folder's name as the user would call it (`.` and `runs/sweep/` named too).
fn dir_name(path: &Path) -> String {
    let own = path.file_name().map(|n| n.to_os_string());
    own.or_else(|| std::fs::canonicalize(path).ok()?.file_name().map(|n| n.to_os_string()))
        .and_then(|n| n.into_string().ok())
        .unwrap_or_else(|| "run".into())
}

/// (x, y) of columns `x` and `y` of a run CSV, finite values only.
fn run_points(file: &Path, live: bool, x: &str, y: &str) -> Result<Vec<(f64, f64)>> {
    let (h, rows) = records_of(file, live)?;
    if h.is_empty() && live {
        return Ok(Vec::new());
    }
    let (xi, yi) = (col(&h, x, file)?, col(&h, y, file)?);
    numbers(file, &h, &rows, &[xi, yi])?;
    Ok(rows.iter().map(|r| (num(r, xi), num(r, yi))).filter(|p| p.0.is_finite() && p.1.is_finite()).collect())
}

/// Colours of runs in one figure: each placement's own (in shades by depth) when every run's
/// (placement, depth) differs, else tab10 by order.
fn run_colors<'a>(runs: impl Iterator<Item = &'a RunInfo>) -> Vec<RGBColor> {
    colors_by_placement_depth(&runs.map(|r| (r.placement.clone(), r.depth)).collect::<Vec<_>>())
}

/// A run's curves for the loss figure, read once.
struct RunCurves {
    info: RunInfo,
    train: Vec<(f64, f64)>,
    val: Vec<(f64, f64)>,
}

impl RunCurves {
    fn read(path: &Path) -> Result<Self> {
        let info = RunInfo::of(path);
        let dir = RunDir::at(path);
        let live = info.is_live();
        let train = if dir.metrics().exists() { run_points(&dir.metrics(), live, "step", "loss")? } else { Vec::new() };
        let val =
            if dir.eval_csv().exists() { run_points(&dir.eval_csv(), live, "step", "val_loss")? } else { Vec::new() };
        Ok(RunCurves { info, train, val })
    }

    fn unfinished(&self) -> Option<String> {
        self.info.unfinished(self.train.last().map(|p| p.0 as usize))
    }
}

/// Loss against step for several runs: the training loss (raw, or with `smooth` > 0 its
/// TensorBoard EMA over the raw curve drawn faint), each run's validation loss from eval.csv in
/// the same colour (dashed, open circles), the divergence step marked with a cross.
fn loss_figure_of(curves: &[RunCurves], opts: &Options, name: &str, title: &str) -> Figure {
    let mut fig = Figure::new(
        name,
        title,
        "step",
        "loss",
        (if opts.log_x { Scale::Log10 } else { Scale::Linear }, Scale::Linear),
    );
    let colors = run_colors(curves.iter().map(|c| &c.info));
    let smooth = opts.smooth > 0.0;
    for (c, &color) in curves.iter().zip(&colors) {
        let marker = c.info.diverged_at.and_then(|k| c.train.iter().rev().find(|p| p.0 <= k as f64).copied());
        // A run still going (or stopped before its end) says so where its line is named.
        let label = match &c.info.status {
            crate::runs::Status::Running(_) => format!("{} (running)", c.info.name),
            _ if c.info.is_finished() => c.info.name.clone(),
            _ => format!("{} (not finished)", c.info.name),
        };
        if smooth {
            let mut raw = Series::new(format!("{label} (raw)"), color, c.train.clone());
            (raw.faint, raw.in_legend, raw.dots) = (true, false, Dots::None);
            fig.series.push(raw);
            let ys: Vec<f64> = c.train.iter().map(|p| p.1).collect();
            let points = c.train.iter().zip(ema(&ys, opts.smooth)).map(|(p, y)| (p.0, y)).collect();
            let mut s = Series::new(label.clone(), color, points);
            (s.marker, s.dots) = (marker, Dots::None);
            fig.series.push(s);
        } else {
            let mut s = Series::new(label.clone(), color, c.train.clone());
            s.marker = marker;
            // Points only on a short curve, where they show where the steps are.
            s.dots = if c.train.len() <= 12 { Dots::Filled } else { Dots::None };
            fig.series.push(s);
        }
        if !c.val.is_empty() {
            let mut v = Series::new(format!("{label} validation"), color, c.val.clone());
            (v.line, v.dots, v.in_legend) = (Line::Dashed, Dots::Open, false);
            fig.series.push(v);
        }
    }
    let has_val = curves.iter().any(|c| !c.val.is_empty());
    if has_val || smooth {
        let train = if smooth { format!("training loss, EMA {}", opts.smooth) } else { "training loss".into() };
        fig.keys.push(Key::new(train, Some(Line::Solid), Mark::None));
    }
    if smooth {
        let mut raw = Key::new("training loss, raw", Some(Line::Solid), Mark::None);
        raw.faint = true;
        fig.keys.push(raw);
    }
    if has_val {
        fig.keys.push(Key::new("validation loss", Some(Line::Dashed), Mark::Open));
    }
    if fig.series.iter().any(|s| s.marker.is_some()) {
        fig.keys.push(Key::new("divergence", None, Mark::Cross));
    }
    fig
}

fn loss_title(curves: &[RunCurves]) -> String {
    if curves.iter().any(|c| !c.val.is_empty()) {
        "training and validation loss".into()
    } else {
        "training loss".into()
    }
}

/// (step, sub-layer, gradient norm) rows of grad_norms.csv.
type GradRows = Vec<(usize, f64, f64)>;

/// A run's grad_norms.csv: (step, sub-layer, norm) rows of the sub-layers (the embedding row,
/// without a layer, left out), and the steps whose rows are complete (as many as the first
/// step's: a step being written by a live run is not yet).
fn grad_rows(run: &RunInfo) -> Result<(GradRows, Vec<usize>)> {
    let file = RunDir::at(&run.path).grad_norms();
    if !file.exists() {
        return Ok((Vec::new(), Vec::new()));
    }
    let (h, rows) = records_of(&file, run.is_live())?;
    if h.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let (s, l, g) = (col(&h, "step", &file)?, col(&h, "layer", &file)?, col(&h, "grad_norm", &file)?);
    numbers(&file, &h, &rows, &[s, l, g])?;
    let data: GradRows = rows
        .iter()
        .filter(|r| !r.get(l).unwrap_or("").trim().is_empty())
        .filter_map(|r| Some((r.get(s)?.trim().parse().ok()?, num(r, l), num(r, g))))
        .collect();
    let mut counts: Vec<(usize, usize)> = Vec::new();
    for &(step, _, _) in &data {
        match counts.last_mut() {
            Some((s, n)) if *s == step => *n += 1,
            _ => counts.push((step, 1)),
        }
    }
    let full = counts.first().map_or(0, |c| c.1);
    Ok((data, counts.into_iter().filter(|c| c.1 == full).map(|c| c.0).collect()))
}

/// Per-sub-layer gradient norm against depth index (bottom = 0) at chosen steps (default the
/// first and last recorded), log-y, for every run with rows in grad_norms.csv. One run: a colour
/// per step. Several: a colour per run and a line style per step (the last solid) in one figure,
/// or one figure per run (`grad_norms-RUN`) when more than three steps are asked for. Runs
/// without rows, and asked-for steps a run lacks, are said in `notes`.
pub fn grad_norm_figures(runs: &[PathBuf], steps: &[usize], notes: &mut Vec<String>) -> Result<Vec<Figure>> {
    let mut drawn: Vec<(RunInfo, GradRows, Vec<usize>)> = Vec::new();
    let mut without = Vec::new();
    for path in runs {
        let info = RunInfo::of(path);
        let (data, complete) = grad_rows(&info)?;
        if complete.is_empty() {
            without.push(info.name.clone());
            continue;
        }
        let chosen: Vec<usize> = if steps.is_empty() {
            let ends = [complete[0], complete[complete.len() - 1]];
            ends.into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect()
        } else {
            let (have, lack): (Vec<usize>, Vec<usize>) = steps.iter().partition(|s| complete.contains(s));
            if !lack.is_empty() {
                let list = |v: &[usize]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
                notes.push(format!(
                    "grad_norms: {} has no gradient norms at step {} (recorded: {})",
                    info.name,
                    list(&lack),
                    list(&complete)
                ));
            }
            have
        };
        drawn.push((info, data, chosen));
    }
    if drawn.is_empty() {
        return Ok(Vec::new());
    }
    if !without.is_empty() {
        notes.push(format!("grad_norms: no gradient norms recorded (yet) in {}", without.join(", ")));
    }
    let series_at = |data: &[(usize, f64, f64)], step: usize| -> Vec<(f64, f64)> {
        data.iter().filter(|r| r.0 == step).map(|r| (r.1, r.2)).collect()
    };
    let figure = |name: String, title: String| {
        Figure::new(name, title, "sub-layer (0 = bottom)", "gradient norm", (Scale::Linear, Scale::Log10))
    };
    let single = |(info, data, chosen): &(RunInfo, GradRows, Vec<usize>), name: String| {
        let mut fig = figure(name, format!("per-sub-layer gradient norm ({})", info.path.display()));
        for (i, &step) in chosen.iter().enumerate() {
            fig.series.push(Series::new(format!("step {step}"), nth_color(i), series_at(data, step)));
        }
        fig
    };
    if drawn.len() == 1 {
        return Ok(vec![single(&drawn[0], "grad_norms".into())]);
    }
    if drawn.iter().any(|d| d.2.len() > 3) {
        return Ok(drawn.iter().map(|d| single(d, format!("grad_norms-{}", d.0.name))).collect());
    }
    let mut fig = figure("grad_norms".into(), "per-sub-layer gradient norm".into());
    // The last step drawn solid, those before it dashed, then dotted.
    let style = |from_last: usize| [Line::Solid, Line::Dashed, Line::Dotted][from_last.min(2)];
    for ((info, data, chosen), color) in drawn.iter().zip(run_colors(drawn.iter().map(|d| &d.0))) {
        for (i, &step) in chosen.iter().enumerate() {
            let last = i + 1 == chosen.len();
            let label = if last { info.name.clone() } else { format!("{} step {step}", info.name) };
            let mut s = Series::new(label, color, series_at(data, step));
            s.line = style(chosen.len() - 1 - i);
            s.in_legend = last;
            s.dots = Dots::None;
            fig.series.push(s);
        }
    }
    let same_steps = drawn.windows(2).all(|w| w[0].2 == w[1].2);
    let longest = drawn.iter().map(|d| d.2.len()).max().unwrap_or(0);
    for from_last in (0..longest).rev() {
        let label = if same_steps {
            format!("step {}", drawn[0].2[drawn[0].2.len() - 1 - from_last])
        } else if steps.is_empty() {
            (if from_last == 0 { "last recorded step" } else { "first recorded step" }).to_string()
        } else {
            format!("{} step asked for", ["last", "second-last", "third-last"][from_last])
        };
        fig.keys.push(Key::new(label, Some(style(from_last)), Mark::None));
    }
    Ok(vec![fig])
}

fn by_placement(rows: &[csv::StringRecord], p: usize, x: usize, y: usize) -> Vec<Series> {
    let mut names: Vec<String> = rows.iter().filter_map(|r| r.get(p).map(String::from)).collect();
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
        .into_iter()
        .map(|name| {
            let mut points: Vec<(f64, f64)> =
                rows.iter().filter(|r| r.get(p) == Some(name.as_str())).map(|r| (num(r, x), num(r, y))).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series::new(name.clone(), placement_color(&name), points)
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
        let colors = colors_by_placement_depth(&keys);
        let series = keys
            .iter()
            .zip(colors)
            .map(|((pl, depth), color)| {
                let mut points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.get(p) == Some(pl.as_str()) && num(r, d) as usize == *depth)
                    .map(|r| (num(r, x), num(r, y)))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series::new(format!("{pl} L={depth}"), color, points)
            })
            .collect();
        (series, format!("{column}_vs_{against}"))
    };
    let x_label = if against == "depth" { "depth (sub-layers)" } else { against };
    let mut fig =
        Figure::new(name, format!("{column} against {against}"), x_label, column, (Scale::Log2, Scale::Linear));
    fig.series = series;
    Ok(fig)
}

/// Maximum tolerable LR against depth per placement (Table 1), from stress.csv. A run that
/// survived the whole ramp (`survived` true: its max_lr is the peak it reached, not a measured
/// limit) is drawn as a lower bound, an open circle with an arrow up; placements are shifted a
/// little apart so that equal values stay visible.
pub fn max_lr_figure(stress: &Path) -> Result<Figure> {
    let file = stress.join("stress.csv");
    let (h, rows) = records(&file)?;
    let (p, d, y) = (col(&h, "placement", &file)?, col(&h, "depth", &file)?, col(&h, "max_lr", &file)?);
    numbers(&file, &h, &rows, &[d, y])?;
    let survived = h.iter().position(|c| c == "survived");
    let mut series = by_placement(&rows, p, d, y);
    for s in &mut series {
        s.lower_bounds = rows
            .iter()
            .filter(|r| r.get(p) == Some(s.label.as_str()))
            .filter(|r| survived.and_then(|i| r.get(i)).is_some_and(|v| v.trim() == "true"))
            .map(|r| (num(r, d), num(r, y)))
            .collect();
    }
    let mut fig = Figure::new(
        "max_lr",
        "maximum tolerable learning rate",
        "depth (sub-layers)",
        "max LR",
        (Scale::Log2, Scale::Log10),
    );
    if series.iter().any(|s| !s.lower_bounds.is_empty()) {
        fig.keys.push(Key::new("survived the ramp:\n limit ≥ value", None, Mark::LowerBound));
    }
    fig.series = series;
    fig.dodge = true;
    Ok(fig)
}

/// Input-gradient norm against sub-layer, one line per placement and depth (shades of the
/// placement's colour by depth), from a probe CSV; with the `predicted_from_branches` and
/// `predicted_from_sums` columns (keel since the trained-run probe), those predictions beside
/// each line, dashed and dotted, their styles explained once in the legend.
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
    // Grouped by placement (in the order they come), shallow to deep.
    let first: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
    let depth_of = |k: &(String, String)| k.1.trim().parse::<f64>().unwrap_or(f64::INFINITY);
    keys.sort_by(|a, b| {
        let rank = |k: &(String, String)| first.iter().position(|p| *p == k.0).unwrap_or(0);
        rank(a).cmp(&rank(b)).then(depth_of(a).total_cmp(&depth_of(b)))
    });
    let colors = colors_by_placement_depth(
        &keys.iter().map(|(pl, dp)| (pl.clone(), dp.trim().parse().unwrap_or(0))).collect::<Vec<_>>(),
    );
    let mut series = Vec::new();
    let mut predicted = [false, false];
    for ((pl, dp), color) in keys.iter().zip(colors) {
        let of = || rows.iter().filter(|r| r.get(p) == Some(pl.as_str()) && r.get(d) == Some(dp.as_str()));
        series.push(Series::new(format!("{pl} L={dp}"), color, of().map(|r| (num(r, l), num(r, g))).collect()));
        // Empty where the placement has no prediction (HybridNorm); absent in CSVs made before it.
        for (k, (column, line, what)) in
            [(from_branches, Line::Dashed, "branches"), (from_sums, Line::Dotted, "sums")].into_iter().enumerate()
        {
            let Some(c) = column else { continue };
            let points: Vec<(f64, f64)> =
                of().filter_map(|r| Some((num(r, l), r.get(c)?.parse::<f64>().ok()?))).collect();
            if !points.is_empty() {
                predicted[k] = true;
                let mut s = Series::new(format!("{pl} L={dp} predicted from {what}"), color, points);
                (s.line, s.in_legend) = (line, false);
                series.push(s);
            }
        }
    }
    // One figure per probe CSV: named after the file (probe.csv -> probe, p30.csv -> probe-p30).
    let stem = csv_path.file_stem().and_then(|s| s.to_str()).unwrap_or("probe");
    let mut fig = Figure::new(
        if stem == "probe" { "probe".into() } else { format!("probe-{stem}") },
        "gradient ratio to the top sub-layer",
        "sub-layer (0 = bottom)",
        "gradient ratio",
        (Scale::Linear, Scale::Log10),
    );
    if predicted.iter().any(|&p| p) {
        fig.keys.push(Key::new("measured", Some(Line::Solid), Mark::None));
    }
    if predicted[0] {
        fig.keys.push(Key::new("predicted from branches", Some(Line::Dashed), Mark::None));
    }
    if predicted[1] {
        fig.keys.push(Key::new("predicted from sums", Some(Line::Dotted), Mark::None));
    }
    fig.series = series;
    Ok(fig)
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
        series.push(Series::new(placement, color, points));
    }
    let mut fig = Figure::new(
        "layer_removal",
        "perplexity increase when one sub-layer is removed",
        "removed sub-layer (0 = bottom)",
        "delta perplexity",
        (Scale::Linear, Scale::Linear),
    );
    fig.series = series;
    Ok(fig)
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
    /// The EMA weight for training-loss curves ([`ema`]), in [0, 1); 0 draws them raw.
    pub smooth: f64,
}

/// The figures of a `keel plot`, and what it says on stderr about them (runs not finished,
/// steps missing).
pub struct Plot {
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

/// The run directories of a sweep's or stress grid's folder (sub-folders with a config.toml or
/// metrics.csv; `.configs` and other hidden ones skipped), in grid order: depth, placement (in
/// `Placement::ALL`'s order), name.
fn grid_runs(dir: &Path) -> Vec<RunInfo> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut runs: Vec<RunInfo> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !dir_name(p).starts_with('.'))
        .filter(|p| RunDir::at(p).config().exists() || RunDir::at(p).metrics().exists())
        .map(|p| RunInfo::of(&p))
        .collect();
    let rank = |r: &RunInfo| {
        Placement::parse(&r.placement).ok().and_then(|p| Placement::ALL.iter().position(|&q| q == p)).unwrap_or(99)
    };
    runs.sort_by(|a, b| (a.depth, rank(a), &a.name).cmp(&(b.depth, rank(b), &b.name)));
    runs
}

/// `name (why), name (why)`.
fn listing(items: &[(String, String)]) -> String {
    items.iter().map(|(n, why)| format!("{n} ({why})")).collect::<Vec<_>>().join(", ")
}

/// The figures of a sweep's or stress grid's folder, finished or not: the summary.csv and
/// stress.csv figures where those files exist, and the loss curves of every run with a step
/// logged (`loss-NAME`); the notes name the runs that have not finished, and the runs missing
/// from summary.csv.
fn grid_figures(dir: &Path, opts: &Options, plot: &mut Plot) -> Result<()> {
    let name = dir_name(dir);
    let runs = grid_runs(dir);
    let summary = dir.join("summary.csv");
    if summary.exists() {
        let fig = summary_figure(dir, &opts.column, &opts.against)?;
        let (h, rows) = records(&summary)?;
        let listed: Vec<String> = match h.iter().position(|c| c == "run") {
            Some(i) => rows.iter().filter_map(|r| r.get(i).map(String::from)).collect(),
            None => Vec::new(),
        };
        let missing: Vec<&RunInfo> = runs.iter().filter(|r| !listed.contains(&r.name)).collect();
        if !missing.is_empty() {
            let (done, running): (Vec<&RunInfo>, Vec<&RunInfo>) = missing.into_iter().partition(|r| r.is_finished());
            let mut parts = Vec::new();
            if !running.is_empty() {
                let names: Vec<&str> = running.iter().map(|r| r.name.as_str()).collect();
                parts.push(format!("not finished: {}", names.join(", ")));
            }
            if !done.is_empty() {
                let names: Vec<&str> = done.iter().map(|r| r.name.as_str()).collect();
                parts.push(format!(
                    "finished but not in summary.csv yet: {} (`keel sweep --collect --out {}` adds them)",
                    names.join(", "),
                    dir.display()
                ));
            }
            let n = listed.len();
            plot.notes.push(format!(
                "{}: drawn from {} ({n} run{} so far); {}",
                fig.name,
                summary.display(),
                if n == 1 { "" } else { "s" },
                parts.join("; ")
            ));
        }
        plot.figures.push(fig);
    }
    if dir.join("stress.csv").exists() {
        plot.figures.push(max_lr_figure(dir)?);
    }
    if runs.is_empty() {
        if !summary.exists() && !dir.join("stress.csv").exists() {
            return Err(not_an_input(dir));
        }
        return Ok(());
    }
    let curves = runs.iter().map(|r| RunCurves::read(&r.path)).collect::<Result<Vec<_>>>()?;
    let (with, without): (Vec<RunCurves>, Vec<RunCurves>) = curves.into_iter().partition(|c| !c.train.is_empty());
    let fig_name = format!("loss-{name}");
    let mut incomplete: Vec<(String, String)> =
        with.iter().filter_map(|c| Some((c.info.name.clone(), c.unfinished()?))).collect();
    incomplete.extend(
        without.iter().map(|c| (c.info.name.clone(), format!("{}: not drawn", c.unfinished().unwrap_or_default()))),
    );
    if with.is_empty() {
        plot.notes.push(format!("{name}: no run has logged a step yet, so no loss figure: {}", listing(&incomplete)));
        return Ok(());
    }
    if !summary.exists() && !dir.join("stress.csv").exists() {
        plot.notes.push(format!(
            "{name}: no summary.csv or stress.csv yet (written as runs finish, and for a stress grid once all have): drawing the runs' loss curves so far"
        ));
    }
    let note = if incomplete.is_empty() {
        None
    } else {
        Some(format!("{fig_name}: {} of {} runs drawn; not finished: {}", with.len(), runs.len(), listing(&incomplete)))
    };
    plot.notes.extend(note);
    let title = format!("{} ({name})", loss_title(&with));
    plot.figures.push(loss_figure_of(&with, opts, &fig_name, &title));
    Ok(())
}

fn not_an_input(p: &Path) -> anyhow::Error {
    InputError(format!(
        "{} is neither a run directory (metrics.csv), a sweep (summary.csv), a stress folder (stress.csv), a folder of runs, a layer-removal study (layer_removal.csv) nor a probe CSV",
        p.display()
    ))
    .into()
}

/// The figures for `paths`, each recognised by what it holds: run directories (one loss figure
/// for all of them, and the gradient norms of all that have them), sweeps and stress grids
/// (their summary figure and the loss curves of their runs, finished or not), layer-removal
/// studies (one figure for all) and probe CSVs.
pub fn figures(paths: &[PathBuf], opts: &Options) -> Result<Plot> {
    if !(0.0..1.0).contains(&opts.smooth) {
        return Err(InputError(format!(
            "--smooth {}: the EMA weight must be at least 0 and below 1 (0: raw curves; TensorBoard's default is 0.6)",
            opts.smooth
        ))
        .into());
    }
    let mut runs = Vec::new();
    let mut plot = Plot { figures: Vec::new(), notes: Vec::new() };
    let mut removal = Vec::new();
    for p in paths {
        if p.join("layer_removal.csv").exists() || p.file_name().is_some_and(|n| n == "layer_removal.csv") {
            removal.push(p.clone());
        } else if p.is_file() {
            plot.figures.push(probe_figure(p)?);
        } else if RunDir::at(p).metrics().exists() {
            runs.push(p.clone());
        } else if p.is_dir() {
            grid_figures(p, opts, &mut plot)?;
        } else {
            return Err(not_an_input(p));
        }
    }
    if !removal.is_empty() {
        plot.figures.push(layer_removal_figure(&removal)?);
    }
    if !runs.is_empty() {
        let curves = runs.iter().map(|r| RunCurves::read(r)).collect::<Result<Vec<_>>>()?;
        let incomplete: Vec<(String, String)> =
            curves.iter().filter_map(|c| Some((c.info.name.clone(), c.unfinished()?))).collect();
        if !incomplete.is_empty() {
            plot.notes.push(format!("loss: not finished: {}", listing(&incomplete)));
        }
        plot.figures.push(loss_figure_of(&curves, opts, "loss", &loss_title(&curves)));
        plot.figures.extend(grad_norm_figures(&runs, &opts.steps, &mut plot.notes)?);
    }
    if plot.figures.is_empty() {
        return Err(InputError(format!(
            "nothing to draw yet: {}\n  run the command again once a run has logged a step",
            plot.notes.join("; ")
        ))
        .into());
    }
    Ok(plot)
}
