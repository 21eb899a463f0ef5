//! Smoke test of `arbat bench idle` (seconds): ramps a self-hosted node and the relay to a
//! few idle sockets and writes the report with the memory plot.

use std::process::Command;

#[test]
fn bench_idle_ramps_and_writes_its_report() {
    let out = std::env::temp_dir().join(format!("arbat-bench-idle-{}", uuid::Uuid::new_v4()));
    let status = Command::new(tests::arbat_binary())
        .args(["bench", "idle", "--customers", "5", "--sockets", "60"])
        .args(["--steps", "3", "--hold", "0.5", "--partitions", "4"])
        .arg("--out")
        .arg(&out)
        .env("ARBAT_LOG", "warn")
        .status()
        .expect("arbat runs");
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench-idle.json")).unwrap())
            .unwrap();
    let idle = report["idle"].as_array().unwrap();
    assert_eq!(idle.len(), 2, "{report}");
    for (result, target) in idle.iter().zip(["arbat", "relay"]) {
        assert_eq!(result["target"], target);
        assert_eq!(result["sockets_open"], 60, "{result}");
        let ramp = result["ramp"].as_array().unwrap();
        assert_eq!(ramp.len(), 3, "{result}");
        assert_eq!(ramp[2][0], 60);
        assert!(result["rss_after_kib"].as_u64().unwrap() > 0);
        assert!(result["idle_cpu_percent"].as_f64().is_some());
    }
    let markdown = std::fs::read_to_string(out.join("bench-idle.md")).unwrap();
    assert!(
        markdown.starts_with("# Arbat idle-density benchmark"),
        "{markdown}"
    );
    assert!(markdown.contains("arbat bench idle --customers 5 --sockets 60 --steps 3"));
    assert!(markdown.contains("](bench-idle-memory.svg)"), "{markdown}");
    let svg = std::fs::read_to_string(out.join("bench-idle-memory.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let _ = std::fs::remove_dir_all(&out);
}
