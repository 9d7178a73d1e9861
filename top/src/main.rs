//! `ringpipe-top`: watch running ringpipe pipelines from another terminal.
//!
//! ```text
//! ringpipe-top                  # the pipelines running here; the live view if just one
//!                               # and standard output is a terminal
//! ringpipe-top PID              # the live view of PID's pipeline (q quits)
//! ringpipe-top PID --once       # one plain table, for logs
//! ringpipe-top PID --json       # one JSON snapshot; --follow: one per interval
//! ```
//!
//! A pipeline is watchable when built with `Builder::observable(true)`; only its own
//! user may watch it. PID may also be a socket name from the list, for a process with
//! several observable pipelines.

mod render;

use std::io::IsTerminal;
use std::time::Duration;

use ringpipe_engine::view::{self, Snapshot, Target, View};

struct Args {
    target: Option<String>,
    once: bool,
    json: bool,
    follow: bool,
    interval: Duration,
}

fn args() -> Result<Args, String> {
    let mut a =
        Args { target: None, once: false, json: false, follow: false, interval: Duration::from_secs(1) };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--once" => a.once = true,
            "--json" => a.json = true,
            "--follow" => a.follow = true,
            "--interval-ms" => {
                let ms: u64 = it.next().and_then(|v| v.parse().ok()).ok_or("--interval-ms takes a number")?;
                a.interval = Duration::from_millis(ms.max(50));
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}\n{USAGE}")),
            _ => a.target = Some(arg),
        }
    }
    Ok(a)
}

const USAGE: &str = "usage: ringpipe-top [PID|SOCKET] [--once | --json [--follow]] [--interval-ms N]";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringpipe-top: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let targets = view::list()?;
    let target = match &args.target {
        Some(t) => pick(&targets, t)?,
        // One pipeline: watch it, if there is a terminal to draw on; piped, the list.
        None if targets.len() == 1 && std::io::stdout().is_terminal() => targets[0].clone(),
        None => {
            print!("{}", render::list(&targets));
            return Ok(());
        }
    };
    let view = View::attach(&target)?;
    if args.json {
        loop {
            println!("{}", render::json(&view.snapshot()?));
            if !args.follow {
                return Ok(());
            }
            std::thread::sleep(args.interval);
        }
    }
    if args.once {
        // Two readings a little apart, so that rates mean something.
        let before = view.snapshot()?;
        std::thread::sleep(args.interval.min(Duration::from_millis(500)));
        print!("{}", render::table(&view.snapshot()?, Some(&before)));
        return Ok(());
    }
    render::live(&view, args.interval)
}

/// The target named by a pid or a socket name.
fn pick(targets: &[Target], name: &str) -> Result<Target, String> {
    let found: Vec<&Target> = match name.parse::<u32>() {
        Ok(pid) => targets.iter().filter(|t| t.pid == pid).collect(),
        Err(_) => targets.iter().filter(|t| t.socket == name).collect(),
    };
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!("no observable pipeline {name} (ringpipe-top lists them)")),
        many => Err(format!(
            "process {name} has {} observable pipelines; name one: {}",
            many.len(),
            many.iter().map(|t| t.socket.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Rates between two snapshots of the same pipeline.
pub(crate) fn per_second(
    now: &Snapshot,
    before: Option<&Snapshot>,
    f: impl Fn(&Snapshot) -> u64,
) -> Option<f64> {
    let before = before?;
    let dt = now.elapsed_ns.checked_sub(before.elapsed_ns).filter(|&d| d > 0)? as f64 / 1e9;
    Some(f(now).saturating_sub(f(before)) as f64 / dt)
}
