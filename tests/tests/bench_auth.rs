//! Smoke test of `arbat bench auth` (seconds): the real binary self-hosts an embedded node,
//! measures every figure beside its baseline and writes the report.

use std::process::Command;

#[test]
fn bench_auth_runs_and_writes_its_report() {
    let out = std::env::temp_dir().join(format!("arbat-bench-auth-{}", uuid::Uuid::new_v4()));
    let status = Command::new(tests::arbat_binary())
        .args(["bench", "auth", "--customers", "5", "--login-clients", "2"])
        .args([
            "--read-clients",
            "1",
            "--warmup",
            "0.2",
            "--duration",
            "0.5",
        ])
        .arg("--out")
        .arg(&out)
        .env("ARBAT_LOG", "warn")
        .status()
        .expect("arbat runs");
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench-auth.json")).unwrap())
            .unwrap();
    let figures = report["figures"].as_array().unwrap();
    assert_eq!(figures.len(), 5, "{report}");
    for figure in figures {
        assert!(figure["value"].as_f64().unwrap() > 0.0, "{figure}");
        assert!(figure["ratio"].as_f64().is_some(), "{figure}");
    }
    assert!(report["argon2"].as_str().unwrap().contains("m = 19456 KiB"));
    assert!(report["read_latency"]["samples"].as_u64().unwrap() > 0);
    let markdown = std::fs::read_to_string(out.join("bench-auth.md")).unwrap();
    assert!(markdown.contains("arbat bench auth --login-prefix"));
    let _ = std::fs::remove_dir_all(&out);
}
