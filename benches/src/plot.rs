//! A small SVG writer for the report's plots: line charts with axes, ticks, labels, a title
//! and a legend, on a linear or a log y axis. Hand-written because two chart kinds do not
//! justify a plotting crate and its dependency tree in a workspace that builds on 2 cores.
//!
//! [`for_run`] decides what to draw from a [`RunResult`]: latency percentiles of every table
//! with latency columns, and the per-second series over time.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::common::{LATENCY_COLUMNS, RunResult, Series};

pub const WIDTH: f64 = 800.0;
/// The height without the legend; the legend adds a line per entry below, so long row names
/// (the tables' full descriptions) never cover the data.
pub const HEIGHT: f64 = 400.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;
const LEGEND_LINE: f64 = 18.0;

/// Distinguishable on white and in grey-scale print, in order of use.
const COLOURS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
];

#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    Log,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Names for x = 0, 1, 2, …: a category axis (percentiles) instead of numbers.
    pub x_categories: Vec<String>,
    pub y_scale: Scale,
    pub lines: Vec<Line>,
}

/// One axis: the range drawn and where the ticks go.
#[derive(Debug, Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
}

impl Axis {
    /// Ticks at 1, 2 or 5 × 10ⁿ, about five of them, the range widened to whole ticks.
    fn linear(min: f64, max: f64) -> Axis {
        let (min, max) = if max > min {
            (min, max)
        } else {
            (min, min + 1.0)
        };
        let raw = (max - min) / 5.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * magnitude)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * magnitude);
        let lo = (min / step).floor() * step;
        let hi = (max / step).ceil() * step;
        let n = ((hi - lo) / step).round() as usize;
        Axis {
            lo,
            hi,
            log: false,
            ticks: (0..=n).map(|i| lo + i as f64 * step).collect(),
        }
    }

    /// Whole decades; with fewer than three, 2× and 5× ticks too so the axis is not bare.
    fn log(min: f64, max: f64) -> Axis {
        let lo_exp = min.log10().floor() as i32;
        let mut hi_exp = max.log10().ceil() as i32;
        if hi_exp <= lo_exp {
            hi_exp = lo_exp + 1;
        }
        let mut ticks = Vec::new();
        for e in lo_exp..=hi_exp {
            let decade = 10f64.powi(e);
            ticks.push(decade);
            if hi_exp - lo_exp < 3 && e < hi_exp {
                ticks.extend([2.0 * decade, 5.0 * decade]);
            }
        }
        Axis {
            lo: 10f64.powi(lo_exp),
            hi: 10f64.powi(hi_exp),
            log: true,
            ticks,
        }
    }

    /// Where `v` falls between the ends, 0 to 1.
    fn fraction(&self, v: f64) -> f64 {
        if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }
}

impl Chart {
    fn usable(&self, v: f64) -> bool {
        v.is_finite() && (self.y_scale == Scale::Linear || v > 0.0)
    }

    /// The SVG document. Points a log axis cannot show (zero, negative) break the line.
    pub fn svg(&self) -> String {
        let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let legend_h = self.lines.len() as f64 * LEGEND_LINE + 8.0;
        let height = HEIGHT + legend_h;
        let ys: Vec<f64> = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .filter(|v| self.usable(*v))
            .collect();
        let xs: Vec<f64> = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .filter(|v| v.is_finite())
            .collect();
        let (y_min, y_max) = min_max(&ys).unwrap_or((0.0, 1.0));
        let y = match self.y_scale {
            // Throughput and memory read best from zero.
            Scale::Linear => Axis::linear(y_min.min(0.0), y_max),
            Scale::Log => Axis::log(y_min, y_max),
        };
        let categories = !self.x_categories.is_empty();
        let x = if categories {
            // Half a slot of room either side of the first and last category.
            Axis {
                lo: -0.5,
                hi: self.x_categories.len() as f64 - 0.5,
                log: false,
                ticks: (0..self.x_categories.len()).map(|i| i as f64).collect(),
            }
        } else {
            let (lo, hi) = min_max(&xs).unwrap_or((0.0, 1.0));
            Axis::linear(lo, hi)
        };
        let px = |v: f64| LEFT + x.fraction(v) * plot_w;
        let py = |v: f64| TOP + (1.0 - y.fraction(v)) * plot_h;

        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
            WIDTH / 2.0,
            esc(&self.title)
        );
        // Grid and y ticks.
        for t in &y.ticks {
            let ty = py(*t);
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#e0e0e0"/>
<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                ty + 4.0,
                esc(&number(*t))
            );
        }
        for (i, t) in x.ticks.iter().enumerate() {
            let tx = px(*t);
            let label = if categories {
                self.x_categories[i].clone()
            } else {
                number(*t)
            };
            let _ = writeln!(
                out,
                r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#000"/>
<text x="{tx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + plot_h,
                TOP + plot_h + 5.0,
                TOP + plot_h + 19.0,
                esc(&label)
            );
        }
        // Axes and their labels.
        let _ = writeln!(
            out,
            r##"<polyline points="{LEFT},{TOP} {LEFT},{:.1} {:.1},{:.1}" fill="none" stroke="#000"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>
<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"##,
            TOP + plot_h,
            LEFT + plot_w,
            TOP + plot_h,
            LEFT + plot_w / 2.0,
            TOP + plot_h + 40.0,
            esc(&self.x_label),
            TOP + plot_h / 2.0,
            TOP + plot_h / 2.0,
            esc(&self.y_label)
        );
        // The data: one polyline per unbroken run of usable points; markers where the points
        // are few enough to tell apart.
        for (i, line) in self.lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let markers = line.points.len() <= 24;
            for run in line
                .points
                .split(|p| !self.usable(p.1) || !p.0.is_finite())
                .filter(|r| !r.is_empty())
            {
                let points: Vec<String> = run
                    .iter()
                    .map(|(vx, vy)| format!("{:.1},{:.1}", px(*vx), py(*vy)))
                    .collect();
                let _ = writeln!(
                    out,
                    r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                    points.join(" ")
                );
                if markers {
                    for (vx, vy) in run {
                        let _ = writeln!(
                            out,
                            r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                            px(*vx),
                            py(*vy)
                        );
                    }
                }
            }
            let ly = HEIGHT + 4.0 + i as f64 * LEGEND_LINE + LEGEND_LINE / 2.0;
            let _ = writeln!(
                out,
                r#"<line x1="{LEFT}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/>
<text x="{:.1}" y="{:.1}">{}</text>"#,
                LEFT + 24.0,
                LEFT + 30.0,
                ly + 4.0,
                esc(&shorten(&line.name, 105))
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    let min = values.iter().copied().reduce(f64::min)?;
    let max = values.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

/// A tick label: thousands grouped, small values with the decimals they need.
fn number(v: f64) -> String {
    if v.abs() >= 1000.0 {
        crate::common::grouped(v)
    } else if v == v.round() {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max - 1).collect();
        out.push('…');
        out
    }
}

/// Escapes text for XML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// One plot written for a run: the file name under the plots directory, and what it shows.
#[derive(Debug, Clone)]
pub struct Plot {
    pub file: String,
    pub caption: String,
}

/// The charts a run has data for: latency by percentile for every table with at least two
/// latency columns (log scale: the rows span 0.1 ms to tens of seconds), throughput over time
/// from the per-second series, and resident memory over time from the memory samples.
pub fn charts(run: &RunResult) -> Vec<(String, Chart)> {
    let mut charts = Vec::new();
    let latency_tables: Vec<_> = run
        .tables
        .iter()
        .filter(|t| {
            t.columns
                .iter()
                .filter(|c| LATENCY_COLUMNS.contains(&c.as_str()))
                .count()
                >= 2
        })
        .collect();
    for (n, table) in latency_tables.iter().enumerate() {
        let columns: Vec<(usize, &str)> = table
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| LATENCY_COLUMNS.contains(&c.as_str()))
            .map(|(i, c)| (i, c.as_str()))
            .collect();
        let lines: Vec<Line> = table
            .rows
            .iter()
            .map(|row| Line {
                name: row.name.clone(),
                points: columns
                    .iter()
                    .enumerate()
                    .map(|(x, (i, _))| {
                        let v = row.values.get(*i).copied().flatten().unwrap_or(f64::NAN);
                        (x as f64, v)
                    })
                    .collect(),
            })
            // A row with nothing above zero has nothing a log axis can show.
            .filter(|l| l.points.iter().any(|p| p.1 > 0.0))
            .collect();
        if lines.is_empty() {
            continue;
        }
        let suffix = if n == 0 {
            String::new()
        } else {
            format!("-{}", n + 1)
        };
        charts.push((
            format!("{}-latency{suffix}", run.scenario),
            Chart {
                title: format!("{}: latency by percentile", run.scenario),
                x_label: "percentile".into(),
                y_label: "milliseconds (log scale)".into(),
                x_categories: columns
                    .iter()
                    .map(|(_, c)| c.trim_end_matches(" ms").to_owned())
                    .collect(),
                y_scale: Scale::Log,
                lines,
            },
        ));
    }
    let over_time = |series: Vec<&Series>| -> Vec<Line> {
        series
            .iter()
            .map(|s| {
                let step = s.step_seconds();
                Line {
                    name: s.label().to_owned(),
                    points: s
                        .per_second
                        .iter()
                        .enumerate()
                        .map(|(i, v)| ((i + 1) as f64 * step, *v))
                        .collect(),
                }
            })
            .filter(|l| !l.points.is_empty())
            .collect()
    };
    let throughput = over_time(run.series.iter().filter(|s| !s.is_memory()).collect());
    if !throughput.is_empty() {
        charts.push((
            format!("{}-throughput", run.scenario),
            Chart {
                title: format!("{}: throughput over time", run.scenario),
                x_label: "seconds since the phase started".into(),
                y_label: "per second".into(),
                x_categories: Vec::new(),
                y_scale: Scale::Linear,
                lines: throughput,
            },
        ));
    }
    let memory = over_time(run.series.iter().filter(|s| s.is_memory()).collect());
    if !memory.is_empty() {
        charts.push((
            format!("{}-memory", run.scenario),
            Chart {
                title: format!("{}: resident memory over time", run.scenario),
                x_label: "seconds since the services started".into(),
                y_label: "MiB resident (VmRSS)".into(),
                x_categories: Vec::new(),
                y_scale: Scale::Linear,
                lines: memory,
            },
        ));
    }
    charts
}

/// Writes every chart of `run` as `<dir>/<name>.svg`.
pub fn for_run(run: &RunResult, dir: &Path) -> anyhow::Result<Vec<Plot>> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let mut plots = Vec::new();
    for (name, chart) in charts(run) {
        let file = format!("{name}.svg");
        let path = dir.join(&file);
        std::fs::write(&path, chart.svg())
            .with_context(|| format!("failed to write {}", path.display()))?;
        plots.push(Plot {
            file,
            caption: chart.title,
        });
    }
    Ok(plots)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal well-formedness check: every tag closes in order, attribute values are
    /// quoted, and text holds no raw `<` or unescaped `&`.
    fn well_formed(xml: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = xml;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            for (i, _) in text.match_indices('&') {
                let entity = &text[i..];
                if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| entity.starts_with(e))
                {
                    return Err(format!("raw & in text {text:?}"));
                }
            }
            let close = rest[open..].find('>').ok_or("unterminated tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if tag.starts_with('?') {
                continue;
            }
            if tag.contains('<') {
                return Err(format!("< inside tag {tag:?}"));
            }
            if !tag.matches('"').count().is_multiple_of(2) {
                return Err(format!("unbalanced quotes in {tag:?}"));
            }
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().ok_or("empty tag")?;
                stack.push(name.to_owned());
            }
        }
        if !rest.trim().is_empty() {
            return Err(format!("text after the root: {rest:?}"));
        }
        if stack.is_empty() {
            Ok(())
        } else {
            Err(format!("unclosed {stack:?}"))
        }
    }

    /// The y pixel of every point of the first polyline.
    fn first_line_ys(svg: &str) -> Vec<f64> {
        let line = svg
            .lines()
            .find(|l| l.contains("stroke-width=\"2\""))
            .expect("a data line");
        let points = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        points
            .split(' ')
            .map(|p| p.split(',').nth(1).unwrap().parse().unwrap())
            .collect()
    }

    fn chart(scale: Scale, points: Vec<(f64, f64)>) -> Chart {
        Chart {
            title: "rates <&> \"quoted\"".into(),
            x_label: "seconds".into(),
            y_label: "orders/s".into(),
            x_categories: Vec::new(),
            y_scale: scale,
            lines: vec![Line {
                name: "gateway & co".into(),
                points,
            }],
        }
    }

    #[test]
    fn the_maximum_reaches_the_top_and_zero_the_bottom() {
        let svg = chart(Scale::Linear, vec![(1.0, 0.0), (2.0, 40.0), (3.0, 100.0)]).svg();
        let ys = first_line_ys(&svg);
        assert_eq!(ys.len(), 3);
        assert!((ys[0] - (HEIGHT - BOTTOM)).abs() < 0.05, "{ys:?}");
        assert!((ys[2] - TOP).abs() < 0.05, "{ys:?}");
        assert!((ys[1] - (HEIGHT - BOTTOM - 0.4 * (HEIGHT - TOP - BOTTOM))).abs() < 0.05);
    }

    #[test]
    fn a_log_axis_puts_decades_at_equal_steps_and_breaks_at_zero() {
        let svg = chart(
            Scale::Log,
            vec![
                (0.0, 1.0),
                (1.0, 10.0),
                (2.0, 100.0),
                (3.0, 0.0),
                (4.0, 1.0),
            ],
        )
        .svg();
        let ys = first_line_ys(&svg);
        assert_eq!(ys.len(), 3, "the zero must break the line: {ys:?}");
        assert!((ys[2] - TOP).abs() < 0.05 && (ys[0] - (HEIGHT - BOTTOM)).abs() < 0.05);
        assert!(((ys[0] - ys[1]) - (ys[1] - ys[2])).abs() < 0.05, "{ys:?}");
        assert_eq!(
            svg.matches("<polyline points=").count(),
            3,
            "axes + two runs"
        );
    }

    #[test]
    fn labels_are_present_and_escaped_and_the_document_is_well_formed() {
        let mut c = chart(Scale::Linear, vec![(1.0, 1500.0), (2.0, 2900.0)]);
        c.lines.push(Line {
            name: "baseline".into(),
            points: vec![(1.0, 1000.0)],
        });
        let svg = c.svg();
        well_formed(&svg).unwrap();
        for text in [
            "rates &lt;&amp;&gt; &quot;quoted&quot;",
            ">seconds<",
            ">orders/s<",
            ">gateway &amp; co<",
            ">baseline<",
            ">3,000<",
        ] {
            assert!(svg.contains(text), "{text} missing from\n{svg}");
        }
        assert!(well_formed("<svg><text>a & b</text></svg>").is_err());
        assert!(well_formed("<svg><g></svg></g>").is_err());
    }

    #[test]
    fn linear_ticks_are_round_and_cover_the_data() {
        let a = Axis::linear(0.0, 8403.2);
        assert_eq!(a.lo, 0.0);
        assert!(a.hi >= 8403.2 && a.hi <= 10_000.0, "{a:?}");
        assert!(a.ticks.iter().all(|t| (t / 2000.0).fract() == 0.0), "{a:?}");
    }
}
