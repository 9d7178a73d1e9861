//! `ringpipe-top` against a pipeline this test runs: the list, `--once`, `--json`, the
//! live view in a pseudo-terminal (it shows the stage rows and quits on `q`), and a
//! viewer of another user refused.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringpipe_engine::{stage_fn, Pipeline, StageSpec};

const TOP: &str = env!("CARGO_BIN_EXE_ringpipe-top");

/// An observable pipeline kept busy by a thread until dropped.
struct Busy {
    pipeline: Arc<Pipeline>,
    stop: Arc<AtomicBool>,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl Busy {
    fn start() -> Busy {
        let pipeline = Arc::new(
            Pipeline::builder()
                .stage(StageSpec::with_stage(
                    "top.upper",
                    stage_fn(|f| {
                        f.bytes_mut().make_ascii_uppercase();
                        Ok(())
                    }),
                ))
                .stage(StageSpec::with_stage("top.count", stage_fn(|_f| Ok(()))))
                .observable(true)
                .build()
                .unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (pipeline.clone(), stop.clone());
        let feeder = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for out in p.map((0..64).map(|_| b"abc")) {
                    assert_eq!(&out.unwrap()[..], b"ABC");
                }
            }
        });
        Busy { pipeline, stop, feeder: Some(feeder) }
    }

    /// Its socket's name, as `ringpipe-top` lists it.
    fn socket(&self) -> String {
        self.pipeline.observed_at().expect("built observable").to_owned()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
    }
}

fn top(args: &[&str]) -> std::process::Output {
    Command::new(TOP).args(args).output().unwrap()
}

#[test]
fn once_json_and_the_list_show_the_pipeline() {
    let busy = Busy::start();
    let socket = busy.socket();
    // Piped, never the live view, however many pipelines the other tests run now.
    let list = String::from_utf8(top(&[]).stdout).unwrap();
    assert!(list.contains(&socket) && list.contains("top.upper -> top.count"), "{list}");

    let once = top(&[&socket, "--once"]);
    let text = String::from_utf8(once.stdout).unwrap();
    assert!(once.status.success(), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("top.")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows[0].contains("thread x1"), "{text}");
    assert_eq!(text.matches("<- bottleneck").count(), 1, "{text}");

    let json = top(&[&socket, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["pid"], std::process::id());
    assert_eq!(v["stages"][1]["name"], "top.count");
    assert!(v["stages"][0]["items"].as_u64().unwrap() > 0);
}

#[test]
fn the_live_view_shows_the_stages_and_quits_on_q() {
    let busy = Busy::start();
    let socket = busy.socket();
    // `script` gives the view a pseudo-terminal; what it draws comes back on stdout.
    let mut child = Command::new("script")
        .args([
            "-qfec",
            &format!("stty cols 140 rows 20; exec {TOP} {socket} --interval-ms 100"),
            "/dev/null",
        ])
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs the view in a pseudo-terminal");
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut screen = String::new();
    while !(screen.contains("top.upper") && screen.contains("top.count")) {
        let left =
            deadline.checked_duration_since(Instant::now()).expect("the view never showed the stage rows");
        screen = rx.recv_timeout(left).unwrap_or(screen);
    }
    child.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    let quit = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(quit.elapsed() < Duration::from_secs(60), "q did not quit the view");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn another_user_is_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running the viewer as another user needs root");
        return;
    }
    let busy = Busy::start();
    let socket = busy.socket();
    let mut c = Command::new(TOP);
    c.args([&socket, "--once"]);
    std::os::unix::process::CommandExt::uid(&mut c, 65534);
    std::os::unix::process::CommandExt::gid(&mut c, 65534);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("another user"), "{err}");
}
