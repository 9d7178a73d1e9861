//! Turns one criterion run into a chart: for each benchmark group, a bar per
//! benchmark (ringpipe's in blue, its peers' in grey), throughput from criterion's own
//! estimates, every bar of a group measured in the same run.
//!
//! ```text
//! cargo bench --bench hop --bench pool                # the run (HTML reports in target/criterion/report)
//! cargo run --release --example bench_chart           # -> benches/chart.svg
//! cargo run --release --example bench_chart -- OUT.svg [CRITERION_DIR]
//! ```
//!
//! "One run": the benchmarks whose estimates were written within 30 minutes of the
//! newest, so that an old result left in `target/criterion` is not drawn beside them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use plotters::prelude::*;

/// One benchmark's result.
struct Bench {
    name: String,
    /// Elements or bytes per second.
    per_second: f64,
}

/// A benchmark group and its unit.
struct Group {
    name: String,
    bytes: bool,
    benches: Vec<Bench>,
}

/// Reads `dir/<group>/<bench>/new/{benchmark,estimates}.json`.
fn read(dir: &Path) -> Result<Vec<Group>, Box<dyn std::error::Error>> {
    let mut found: Vec<(SystemTime, String, String, bool, f64)> = Vec::new();
    for group in std::fs::read_dir(dir)? {
        let group = group?.path();
        if !group.is_dir() || group.file_name().is_some_and(|n| n == "report") {
            continue;
        }
        // A benchmark's directory is `<group>/<function>` or `<group>/<function>/<value>`.
        let mut dirs = Vec::new();
        for bench in std::fs::read_dir(&group)? {
            let bench = bench?.path();
            if bench.join("new").is_dir() {
                dirs.push(bench);
            } else if bench.is_dir() {
                for value in std::fs::read_dir(&bench)? {
                    dirs.push(value?.path());
                }
            }
        }
        for bench in dirs {
            let new = bench.join("new");
            let (Ok(meta), Ok(est)) =
                (std::fs::read(new.join("benchmark.json")), new.join("estimates.json").metadata())
            else {
                continue;
            };
            let meta: serde_json::Value = serde_json::from_slice(&meta)?;
            let estimates: serde_json::Value =
                serde_json::from_slice(&std::fs::read(new.join("estimates.json"))?)?;
            let ns = estimates["mean"]["point_estimate"].as_f64().ok_or("no mean estimate")?;
            let (n, bytes) = match (&meta["throughput"]["Elements"], &meta["throughput"]["Bytes"]) {
                (serde_json::Value::Number(n), _) => (n.as_f64().unwrap_or(0.0), false),
                (_, serde_json::Value::Number(n)) => (n.as_f64().unwrap_or(0.0), true),
                _ => continue, // no throughput: nothing to compare as a rate
            };
            let group_id = meta["group_id"].as_str().unwrap_or("?").to_owned();
            let name = match (meta["function_id"].as_str(), meta["value_str"].as_str()) {
                (Some(f), Some(v)) => format!("{f}/{v}"),
                (Some(x), None) | (None, Some(x)) => x.to_owned(),
                (None, None) => "?".to_owned(),
            };
            found.push((est.modified()?, group_id, name, bytes, n / (ns / 1e9)));
        }
    }
    let newest = found.iter().map(|f| f.0).max().ok_or("no criterion results with a throughput")?;
    let window = Duration::from_secs(30 * 60);
    found.retain(|f| newest.duration_since(f.0).unwrap_or_default() <= window);
    found.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
    let mut groups: Vec<Group> = Vec::new();
    for (_, group, name, bytes, per_second) in found {
        if groups.last().is_none_or(|g| g.name != group) {
            groups.push(Group { name: group, bytes, benches: Vec::new() });
        }
        groups.last_mut().expect("just pushed").benches.push(Bench { name, per_second });
    }
    Ok(groups)
}

fn human(v: f64, bytes: bool) -> String {
    let (scale, unit) = match v {
        v if v >= 1e9 => (1e9, "G"),
        v if v >= 1e6 => (1e6, "M"),
        v if v >= 1e3 => (1e3, "K"),
        _ => (1.0, ""),
    };
    format!("{:.2} {unit}{}", v / scale, if bytes { "B/s" } else { "items/s" })
}

fn draw(groups: &[Group], out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let rows: usize = groups.iter().map(|g| g.benches.len() + 2).sum();
    let root = SVGBackend::new(out, (960, (rows * 26 + 20) as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let heights: Vec<u32> = groups.iter().map(|g| ((g.benches.len() + 2) * 26) as u32).collect();
    let mut area = root.margin(10, 10, 10, 10);
    for (g, h) in groups.iter().zip(heights) {
        let (panel, rest) = area.split_vertically(h);
        area = rest;
        let max = g.benches.iter().map(|b| b.per_second).fold(0.0, f64::max).max(1.0);
        let n = g.benches.len() as f64;
        let mut chart = ChartBuilder::on(&panel)
            .caption(format!("{} (same run)", g.name), ("sans-serif", 16))
            .margin_left(230)
            .margin_right(120)
            .build_cartesian_2d(0.0..max, 0.0..n)?;
        for (i, b) in g.benches.iter().enumerate() {
            let y = n - i as f64;
            let color =
                if b.name.starts_with("ringpipe") { RGBColor(40, 90, 200) } else { RGBColor(150, 150, 150) };
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, y - 0.85), (b.per_second, y - 0.15)],
                color.filled(),
            )))?;
            let (x0, y0) = chart.backend_coord(&(0.0, y - 0.5));
            let (x1, _) = chart.backend_coord(&(b.per_second, y - 0.5));
            let style = ("sans-serif", 13).into_font().color(&BLACK);
            let name_style = style.pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Right,
                plotters::style::text_anchor::VPos::Center,
            ));
            root.draw(&Text::new(b.name.clone(), (x0 - 8, y0), name_style))?;
            let value_style = style.pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Left,
                plotters::style::text_anchor::VPos::Center,
            ));
            root.draw(&Text::new(human(b.per_second, g.bytes), (x1 + 6, y0), value_style))?;
        }
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "benches/chart.svg".into()));
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "target/criterion".into()));
    let groups = read(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    draw(&groups, &out)?;
    let benches: usize = groups.iter().map(|g| g.benches.len()).sum();
    println!("{}: {} groups, {benches} benchmarks", out.display(), groups.len());
    Ok(())
}
