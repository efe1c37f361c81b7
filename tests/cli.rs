//! The `tracecube` binary as a user runs it: generation, loading, and a server that stops
//! cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tracecube() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tracecube"))
}

#[test]
fn gen_is_deterministic_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        let out = tracecube()
            .args(["gen", "--rows", "30000", "--seed", "9", "--out"])
            .arg(dir.path().join(name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("generated 30000 traces"));
    }
    let files = |name: &str| {
        let mut v: Vec<_> = std::fs::read_dir(dir.path().join(name))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v.into_iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(files("a"), files("b"));
}

#[test]
fn load_prints_a_summary_and_a_second_load_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let wh = dir.path().join("wh");
    assert!(
        tracecube()
            .args(["gen", "--rows", "4000", "--out"])
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    let load = || {
        tracecube()
            .arg("--warehouse")
            .arg(&wh)
            .arg("load")
            .arg(src.join("*.parquet"))
            .output()
            .unwrap()
    };
    let first = load();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(
        text.starts_with("committed: 4000 rows loaded, 0 duplicates skipped, 0 rejected"),
        "{text}"
    );
    let second = load();
    assert!(second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stdout).starts_with("no-op"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
}

#[test]
fn bad_file_makes_load_exit_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        "contact_id,customer_id,ts,channel,declaration\nc1,u1,2026-01-01T00:00:00Z,phone,\n",
    )
    .unwrap();
    let out = tracecube()
        .arg("--warehouse")
        .arg(dir.path().join("wh"))
        .arg("load")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv row 1 column declaration"), "{err}");
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tracecube()
        .arg("--warehouse")
        .arg(dir.path().join("wh"))
        .args(["serve", "--no-demo", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("ready in"));
    assert!(ready.is_some(), "server did not report ready");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("server did not stop after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn compact_merges_files_and_reports_every_cube() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    for (i, seed) in ["1", "2"].into_iter().enumerate() {
        let src = dir.path().join(format!("src{i}"));
        assert!(
            tracecube()
                .args([
                    "gen", "--rows", "3000", "--days", "5", "--seed", seed, "--out"
                ])
                .arg(&src)
                .status()
                .unwrap()
                .success()
        );
        let load = tracecube()
            .arg("--warehouse")
            .arg(&wh)
            .arg("load")
            .arg(src.join("*.parquet"))
            .output()
            .unwrap();
        assert!(
            load.status.success(),
            "{}",
            String::from_utf8_lossy(&load.stderr)
        );
    }
    let out = tracecube()
        .arg("--warehouse")
        .arg(&wh)
        .arg("compact")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // two loads wrote two files per day for each of the 5 days: merged into one per day
    assert!(
        stdout.contains("traces: 10 file(s) merged into 5"),
        "{stdout}"
    );
    for cube in tracecube_engine::config::default_cubes().keys() {
        assert!(
            stdout.contains(&format!("{cube}: compacted to ")),
            "{cube} missing from:\n{stdout}"
        );
    }
}
