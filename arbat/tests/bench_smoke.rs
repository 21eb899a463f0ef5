//! A tiny self-hosted `arbat bench live`: the real binary in cluster mode (nats-server and
//! PostgreSQL from testkit), a few sockets, about two seconds of load. Asserts that the
//! report is produced and that events were delivered; no speed is asserted.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: bench::BenchCommand,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_live_bench_delivers_events_and_writes_its_report() {
    let out = std::env::temp_dir().join(format!("arbat-bench-smoke-{}", std::process::id()));
    let out_arg = out.display().to_string();
    let cli = Cli::try_parse_from([
        "bench",
        "live",
        "--arbat-bin",
        env!("CARGO_BIN_EXE_arbat"),
        "--customers",
        "2",
        "--sockets",
        "4",
        "--warmup",
        "0.3",
        "--duration",
        "0.7",
        "--in-flight",
        "16",
        "--idle-sockets",
        "20",
        "--idle-hold",
        "0.2",
        "--partitions",
        "4",
        // The peers (nats-ws, nchan) have their own smoke runs in tests/tests/bench_live.rs;
        // this one checks arbat against the relay alone.
        "--peers",
        "none",
        "--out",
        &out_arg,
    ])
    .expect("valid arguments");
    let report = bench::run(bench::BenchArgs {
        command: cli.command,
    })
    .await
    .expect("the bench runs");

    let md = std::fs::read_to_string(out.join("bench-live.md")).expect("markdown report");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("bench-live.json")).expect("json report"),
    )
    .expect("valid json");
    let _ = std::fs::remove_dir_all(&out);

    assert!(md.contains("arbat max") && md.contains("relay max"), "{md}");
    assert_eq!(
        json["scenarios"].as_array().map(Vec::len),
        Some(4),
        "{json:#}"
    );
    for scenario in &report.scenarios {
        assert!(
            scenario.delivered_frames > 0,
            "{} delivered nothing: {scenario:?}",
            scenario.label()
        );
        assert!(
            scenario.latency.samples > 0,
            "{} timed nothing: {scenario:?}",
            scenario.label()
        );
    }
    assert_eq!(report.idle.len(), 2, "{:?}", report.idle);
    for idle in &report.idle {
        assert_eq!(idle.sockets_open, 20, "{idle:?}");
        assert!(idle.rss_after_kib > 0, "{idle:?}");
    }
}
