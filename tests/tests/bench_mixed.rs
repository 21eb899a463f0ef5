//! Smoke test of `arbat bench mixed` (seconds): the real binary self-hosts an embedded node
//! and runs every kind of the day in the open loop; the report accounts for each kind.

use std::process::Command;

#[test]
fn bench_mixed_runs_every_kind_and_writes_its_report() {
    let out = std::env::temp_dir().join(format!("arbat-bench-mixed-{}", uuid::Uuid::new_v4()));
    let output = Command::new(tests::arbat_binary())
        .args(["bench", "mixed", "--mode", "embedded", "--customers", "4"])
        .args([
            "--mix",
            "login=1,read=3,payment=2,incoming=2,notification=2",
        ])
        .args(["--rate", "20", "--warmup", "0.2", "--duration", "1.5"])
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
        serde_json::from_str(&std::fs::read_to_string(out.join("bench-mixed.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["mix"],
        "login=1,read=3,payment=2,incoming=2,notification=2"
    );
    let kinds = report["kinds"].as_array().unwrap();
    let names: Vec<&str> = kinds.iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["login", "read", "payment", "incoming", "notification"]
    );
    for kind in kinds {
        assert!(kind["sent"].as_u64().unwrap() > 0, "{kind}");
        assert_eq!(kind["ok"], kind["sent"], "{kind}");
        assert_eq!(kind["errors"], serde_json::json!({}), "{kind}");
        assert!(kind["answer"]["samples"].as_u64().unwrap() > 0, "{kind}");
        let delivered = kind["delivery"]["samples"].as_u64();
        match kind["kind"].as_str().unwrap() {
            "payment" | "incoming" | "notification" => assert!(delivered.unwrap() > 0, "{kind}"),
            _ => assert!(delivered.is_none(), "{kind}"),
        }
    }
    let markdown = std::fs::read_to_string(out.join("bench-mixed.md")).unwrap();
    assert!(markdown.contains("arbat bench mixed --amount 1.00"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bench_mixed_refuses_a_bad_mix_with_a_reason() {
    for (mix, reason) in [
        ("read=x", "not a whole number"),
        ("walk=3", "unknown kind `walk`"),
        ("read=0", "every weight is zero"),
    ] {
        let output = Command::new(tests::arbat_binary())
            .args(["bench", "mixed", "--mix", mix])
            .output()
            .expect("arbat runs");
        assert!(!output.status.success(), "{mix}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{mix}: {stderr}");
    }
}
