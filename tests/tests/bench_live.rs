//! Smoke test of `arbat bench live` (seconds): the live path beside the relay, the nats-ws
//! peer and the raw NATS rate; nchan is pointed at a missing nginx, so the skip is reported
//! (CI machines need not have nginx).

use std::process::Command;

#[test]
fn bench_live_runs_with_peers_and_reports_a_skipped_nchan() {
    let out = std::env::temp_dir().join(format!("arbat-bench-live-{}", uuid::Uuid::new_v4()));
    let status = Command::new(tests::arbat_binary())
        .args(["bench", "live", "--customers", "5", "--sockets", "20"])
        .args(["--idle-sockets", "20", "--idle-hold", "0.2"])
        .args(["--warmup", "0.3", "--duration", "1", "--in-flight", "16"])
        .args([
            "--rate",
            "50",
            "--partitions",
            "4",
            "--baseline-publish",
            "core",
        ])
        .args(["--peers", "nats-ws,nchan", "--nginx", "/nonexistent/nginx"])
        .arg("--out")
        .arg(&out)
        .env("ARBAT_LOG", "warn")
        .status()
        .expect("arbat runs");
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench-live.json")).unwrap())
            .unwrap();
    let scenarios = report["scenarios"].as_array().unwrap();
    for target in ["arbat", "relay", "nats-ws"] {
        for mode in ["max", "rate"] {
            let s = scenarios
                .iter()
                .find(|s| s["target"] == target && s["mode"] == mode)
                .unwrap_or_else(|| panic!("no {target} {mode} in {report}"));
            assert!(s["events_per_s"].as_f64().unwrap() > 0.0, "{s}");
            assert!(!s["timeline"].as_array().unwrap().is_empty(), "{s}");
        }
    }
    assert!(!scenarios.iter().any(|s| s["target"] == "nchan"));
    let notes = report["notes"].to_string();
    assert!(notes.contains("peer nchan skipped"), "{notes}");
    assert!(notes.contains("apt-get install"), "{notes}");
    let raw = &report["baselines"][0];
    assert_eq!(raw["name"], "raw NATS pub→sub");
    assert!(raw["value"].as_f64().unwrap() > 0.0, "{raw}");
    let markdown = std::fs::read_to_string(out.join("bench-live.md")).unwrap();
    assert!(
        markdown.contains("--peers 'nats-ws,nchan' --nginx /nonexistent/nginx"),
        "{markdown}"
    );
    assert!(markdown.contains("× nats-ws"), "{markdown}");
    for name in ["bench-live-latency.svg", "bench-live-rate.svg"] {
        assert!(markdown.contains(&format!("]({name})")), "{markdown}");
        let svg = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Where Debian puts the nchan module; the peer runs only when nginx and it are installed.
fn nchan_installed() -> bool {
    Command::new("nginx")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
        && std::path::Path::new("/usr/lib/nginx/modules/ngx_nchan_module.so").exists()
}

/// Live (not zombie) nginx worker processes on this machine.
fn nginx_workers() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).starts_with("nginx: worker")
                && !stat
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .count()
}

#[test]
fn bench_live_drives_nchan_with_the_same_clients_when_installed() {
    if !nchan_installed() {
        eprintln!("nginx with nchan is not installed: the skip is covered by the test above");
        return;
    }
    let workers_before = nginx_workers();
    let out = std::env::temp_dir().join(format!("arbat-bench-nchan-{}", uuid::Uuid::new_v4()));
    let status = Command::new(tests::arbat_binary())
        .args(["bench", "live", "--customers", "4", "--sockets", "12"])
        .args(["--idle-sockets", "0", "--no-baseline", "--peers", "nchan"])
        .args(["--warmup", "0.3", "--duration", "1", "--in-flight", "8"])
        .args(["--rate", "40", "--partitions", "4"])
        .arg("--out")
        .arg(&out)
        .env("ARBAT_LOG", "warn")
        .status()
        .expect("arbat runs");
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench-live.json")).unwrap())
            .unwrap();
    for mode in ["max", "rate"] {
        let s = report["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["target"] == "nchan" && s["mode"] == mode)
            .unwrap_or_else(|| panic!("no nchan {mode} in {report}"));
        assert!(s["events_per_s"].as_f64().unwrap() > 0.0, "{s}");
        assert_eq!(s["delivered_frames"], s["expected_frames"], "{s}");
        assert_eq!(s["sockets"], 12, "{s}");
    }
    assert_eq!(
        nginx_workers(),
        workers_before,
        "nginx's workers were stopped"
    );
    let _ = std::fs::remove_dir_all(&out);
}
