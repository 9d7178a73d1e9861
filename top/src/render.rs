//! What `ringpipe-top` shows: the list, a plain table, JSON, and the live view.

use std::fmt::Write as _;
use std::time::Duration;

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ringpipe_engine::view::{Snapshot, StageView, Target, View};

use crate::per_second;

/// The pipelines running here, one line each, with their program and stages.
pub(crate) fn list(targets: &[Target]) -> String {
    let mut out = String::new();
    if targets.is_empty() {
        out.push_str("no observable pipelines running (built with Builder::observable(true))\n");
        return out;
    }
    let _ = writeln!(out, "{:>8}  {:<16} {:<24} stages", "pid", "program", "socket");
    for t in targets {
        let (program, stages) = match View::attach(t).and_then(|v| v.snapshot()) {
            Ok(s) => {
                (s.program.clone(), s.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(" -> "))
            }
            Err(e) => (String::from("?"), e.to_string()),
        };
        let _ = writeln!(out, "{:>8}  {:<16} {:<24} {stages}", t.pid, program, t.socket);
    }
    out
}

fn runs_on(s: &StageView) -> String {
    let place = if s.on_thread { "thread" } else { "process" };
    let sandbox = if s.sandboxed { " sandboxed" } else { "" };
    format!("{place} x{}{sandbox}", s.replicas)
}

fn rate(v: Option<f64>, scale: f64) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1}", v / scale))
}

/// One row's cells: stage, runs on, items, items/s, MB/s in, busy, queue, restarts,
/// pids.
fn cells(now: &Snapshot, before: Option<&Snapshot>, i: usize) -> [String; 9] {
    let s = &now.stages[i];
    let items = per_second(now, before, |x| x.stages.get(i).map_or(0, |s| s.items));
    let bytes = per_second(now, before, |x| x.stages.get(i).map_or(0, |s| s.bytes_in));
    let queue = if s.queue_capacity == 0 { "-".into() } else { format!("{}/{}", s.queued, s.queue_capacity) };
    let pids = s.pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    [
        s.name.clone(),
        runs_on(s),
        s.items.to_string(),
        rate(items, 1.0),
        rate(bytes, 1e6),
        format!("{:.0}%", 100.0 * s.busy_fraction()),
        queue,
        s.restarts.to_string(),
        pids,
    ]
}

const HEADS: [&str; 9] =
    ["stage", "runs on", "items", "items/s", "MB/s in", "busy", "queue", "restarts", "pids"];

fn summary(s: &Snapshot) -> String {
    let elapsed = s.elapsed_ns as f64 / 1e9;
    let waited =
        if s.elapsed_ns == 0 { 0.0 } else { 100.0 * s.submit_waited_ns as f64 / s.elapsed_ns as f64 };
    format!(
        "{} (pid {} on {}): up {elapsed:.1} s, {}/{} items in flight, callers waited {waited:.1}%, {} restarts",
        s.program, s.pid, s.host, s.in_flight, s.max_in_flight, s.restarts
    )
}

/// A plain table, the bottleneck marked.
pub(crate) fn table(now: &Snapshot, before: Option<&Snapshot>) -> String {
    let rows: Vec<[String; 9]> = (0..now.stages.len()).map(|i| cells(now, before, i)).collect();
    let mut widths = HEADS.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: &[String]| {
        let mut l = String::new();
        for (k, (c, w)) in cols.iter().zip(widths).enumerate() {
            if k < 2 {
                let _ = write!(l, "{c:<w$}  ");
            } else {
                let _ = write!(l, "{c:>w$}  ");
            }
        }
        l
    };
    let mut out = summary(now) + "\n";
    out += line(&HEADS.map(String::from)).trim_end();
    out.push('\n');
    let bottleneck = now.bottleneck();
    for (i, r) in rows.iter().enumerate() {
        let mark = if bottleneck == Some(i) { "<- bottleneck" } else { "" };
        out += format!("{}{mark}", line(r)).trim_end();
        out.push('\n');
    }
    out
}

/// One snapshot as a JSON object.
pub(crate) fn json(s: &Snapshot) -> serde_json::Value {
    let stages: Vec<serde_json::Value> = s
        .stages
        .iter()
        .map(|st| {
            serde_json::json!({
                "name": st.name, "replicas": st.replicas, "on_thread": st.on_thread,
                "sandboxed": st.sandboxed, "items": st.items, "bytes_in": st.bytes_in,
                "bytes_out": st.bytes_out, "busy_ns": st.busy_ns, "starved_ns": st.starved_ns,
                "blocked_ns": st.blocked_ns, "busy_fraction": st.busy_fraction(),
                "queued": st.queued, "queue_capacity": st.queue_capacity,
                "restarts": st.restarts, "pids": st.pids,
            })
        })
        .collect();
    serde_json::json!({
        "pid": s.pid, "program": s.program, "host": s.host, "elapsed_ns": s.elapsed_ns,
        "submit_waited_ns": s.submit_waited_ns, "in_flight": s.in_flight,
        "max_in_flight": s.max_in_flight, "restarts": s.restarts,
        "bottleneck": s.bottleneck(), "stages": stages,
    })
}

/// The live view: redrawn every `interval` until `q`, Esc or Ctrl-C, or the program
/// ends.
pub(crate) fn live(view: &View, interval: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let mut terminal = ratatui::init();
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let mut before: Option<Snapshot> = None;
        loop {
            let now = view.snapshot()?;
            let gone = !std::path::Path::new(&format!("/proc/{}", now.pid)).exists();
            terminal.draw(|frame| {
                let [top, body] =
                    Layout::vertical([Constraint::Length(2), Constraint::Min(3)]).areas(frame.area());
                let status = if gone { " (ended)" } else { "   q quits" };
                frame.render_widget(Paragraph::new(format!("{}{status}", summary(&now))), top);
                let bottleneck = now.bottleneck();
                let rows = (0..now.stages.len()).map(|i| {
                    let row = Row::new(cells(&now, before.as_ref(), i));
                    if bottleneck == Some(i) {
                        row.style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED))
                    } else {
                        row
                    }
                });
                let widths = [
                    Constraint::Min(16),
                    Constraint::Length(22),
                    Constraint::Length(10),
                    Constraint::Length(10),
                    Constraint::Length(8),
                    Constraint::Length(5),
                    Constraint::Length(9),
                    Constraint::Length(8),
                    Constraint::Min(8),
                ];
                let table = Table::new(rows, widths)
                    .header(Row::new(HEADS).style(Style::new().add_modifier(Modifier::UNDERLINED)))
                    .block(Block::bordered().title(" ringpipe: stages, the bottleneck highlighted "));
                frame.render_widget(table, body);
            })?;
            before = Some(now);
            if event::poll(interval)? {
                if let Event::Key(k) = event::read()? {
                    let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if k.kind == KeyEventKind::Press
                        && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                    {
                        return Ok(());
                    }
                }
            }
            if gone {
                return Ok(());
            }
        }
    })();
    ratatui::restore();
    result
}
