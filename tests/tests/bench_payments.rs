//! Smoke test of `arbat bench payments` (seconds): the real binary self-hosts an embedded
//! node, pays end to end in both scenarios beside the in-process ledger and writes its
//! report. It asserts that every payment completed with its frame and that the report holds
//! every figure, not a speed.

use std::process::Command;

#[test]
fn bench_payments_runs_both_scenarios_and_writes_its_report() {
    let out = std::env::temp_dir().join(format!("arbat-bench-payments-{}", uuid::Uuid::new_v4()));
    let output = Command::new(tests::arbat_binary())
        .args([
            "bench",
            "payments",
            "--mode",
            "embedded",
            "--customers",
            "4",
        ])
        .args(["--clients", "1,2", "--warmup", "0.2", "--duration", "0.8"])
        .arg("--out")
        .arg(&out)
        // The self-hosted node reads ./operations, as when run from the repository root.
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("ARBAT_LOG", "warn")
        .output()
        .expect("arbat runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench-payments.json")).unwrap())
            .unwrap();
    assert_eq!(report["backend"], "sqlite");
    let scenarios = report["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["spread", "hot"]);
    for scenario in scenarios {
        let points = scenario["closed_loop"].as_array().unwrap();
        assert_eq!(points.len(), 2, "{scenario}");
        let open = &scenario["open_loop"];
        for phase in points.iter().chain([open]) {
            let tally = &phase["tally"];
            assert!(tally["completed"].as_u64().unwrap() > 0, "{phase}");
            assert_eq!(tally["completed_without_frame"], 0, "{phase}");
            assert_eq!(tally["errors"], serde_json::json!({}), "{phase}");
            assert_eq!(tally["other_statuses"], serde_json::json!({}), "{phase}");
            assert!(phase["latency"]["frame"]["samples"].as_u64().unwrap() > 0);
        }
        for point in points {
            assert!(point["ledger_postings_per_s"].as_f64().unwrap() > 0.0);
            assert_eq!(point["ledger_failures"], 0);
            assert!(point["ratio_to_ledger"].as_f64().is_some());
        }
        assert!(open["target_per_s"].as_f64().unwrap() > 0.0);
        assert!(open["p99_below_50_ms"].is_boolean());
        assert!(scenario["growth_with_load"].as_f64().is_some());
    }
    let markdown = std::fs::read_to_string(out.join("bench-payments.md")).unwrap();
    assert!(markdown.contains("arbat bench payments --amount 1.00 --clients 1,2"));
    assert!(markdown.contains("## Scenario `hot`"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bench_payments_refuses_bad_flags_with_a_reason() {
    for (flags, reason) in [
        (&["--clients", "0"][..], "--clients"),
        (&["--scenario", "sideways"][..], "sideways"),
        (&["--amount", "90000.00"][..], "step-up"),
        (&["--customers", "1"][..], "--customers"),
    ] {
        let output = Command::new(tests::arbat_binary())
            .args(["bench", "payments"])
            .args(flags)
            .args(["--out", "/nonexistent/never-written"])
            .output()
            .expect("arbat runs");
        assert!(!output.status.success(), "{flags:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{flags:?}: {stderr}");
    }
}

#[test]
fn bench_payments_runs_clustered_on_postgresql_and_nats() {
    let out = std::env::temp_dir().join(format!("arbat-bench-payments-{}", uuid::Uuid::new_v4()));
    let output = Command::new(tests::arbat_binary())
        .args(["bench", "payments", "--mode", "cluster", "--customers", "3"])
        .args(["--scenario", "hot", "--clients", "2", "--partitions", "4"])
        .args(["--warmup", "0.2", "--duration", "0.8"])
        .arg("--out")
        .arg(&out)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("ARBAT_LOG", "warn")
        .output()
        .expect("arbat runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench-payments.json")).unwrap())
            .unwrap();
    assert_eq!(report["backend"], "postgres");
    assert!(report["mode"].as_str().unwrap().contains("cluster"));
    let hot = &report["scenarios"][0];
    assert_eq!(hot["scenario"], "hot");
    let point = &hot["closed_loop"][0];
    assert!(point["tally"]["completed"].as_u64().unwrap() > 0, "{point}");
    assert_eq!(point["tally"]["errors"], serde_json::json!({}), "{point}");
    assert!(point["ledger_postings_per_s"].as_f64().unwrap() > 0.0);
    assert!(hot["open_loop"]["tally"]["completed"].as_u64().unwrap() > 0);
    let _ = std::fs::remove_dir_all(&out);
}
