//! Smoke test of `arbat bench activation` (seconds): journals changes, restarts the node and
//! activates every customer cold, then reports activations/s and memory per actor.

use std::process::Command;

#[test]
fn bench_activation_restarts_and_activates_every_customer() {
    let out = std::env::temp_dir().join(format!("arbat-bench-activation-{}", uuid::Uuid::new_v4()));
    let status = Command::new(tests::arbat_binary())
        .args(["bench", "activation", "--customers", "12"])
        .args(["--changes-per-customer", "3", "--partitions", "4"])
        .arg("--out")
        .arg(&out)
        .env("ARBAT_LOG", "warn")
        .status()
        .expect("arbat runs");
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench-activation.json")).unwrap())
            .unwrap();
    assert_eq!(report["journaled_changes"], 36, "{report}");
    let passes = report["passes"].as_array().unwrap();
    assert_eq!(passes.len(), 3, "{report}");
    let cold = &passes[1];
    assert_eq!(cold["name"], "cold");
    assert_eq!(cold["reads"], 12, "{cold}");
    assert_eq!(cold["failures"], 0, "{cold}");
    // The cold pass made every customer resident again.
    assert!(cold["resident_after"].as_u64().unwrap() >= 12, "{cold}");
    assert!(report["activations_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["ratio_to_warm"].as_f64().unwrap() > 0.0);
    let markdown = std::fs::read_to_string(out.join("bench-activation.md")).unwrap();
    assert!(
        markdown.contains("arbat bench activation --customers 12"),
        "{markdown}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
