//! Smoke test of `arbat bench scale` (seconds): the real binary starts a 1-node and a 2-node
//! cluster with their CPU limits, measures each, writes the report and plots, and leaves no
//! process or CPU group behind.

use std::process::Command;

fn svg_ok(path: &std::path::Path) {
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert_eq!(svg.matches("<svg").count(), 1);
}

#[test]
fn bench_scale_runs_one_and_two_nodes_and_leaves_nothing_behind() {
    let out = std::env::temp_dir().join(format!("arbat-bench-scale-{}", uuid::Uuid::new_v4()));
    let mut child = Command::new(tests::arbat_binary())
        .args(["bench", "scale", "--nodes", "1,2", "--customers", "8"])
        .args(["--sockets-per-customer", "1", "--partitions", "4"])
        .args([
            "--warmup",
            "0.5",
            "--duration",
            "1",
            "--in-flight-per-node",
            "16",
        ])
        .arg("--out")
        .arg(&out)
        .env("ARBAT_LOG", "warn")
        .spawn()
        .expect("arbat runs");
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(
        !std::path::Path::new(&format!("/sys/fs/cgroup/cpu/arbat-bench-{pid}")).exists(),
        "the CPU groups were removed"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench-scale.json")).unwrap())
            .unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report}");
    for (row, nodes) in rows.iter().zip([1, 2]) {
        assert_eq!(row["nodes"], nodes, "{row}");
        assert_eq!(row["partitions_per_node"].as_array().unwrap().len(), nodes);
        assert_eq!(row["sockets"], 8, "{row}");
        assert!(row["changes_per_s"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["efficiency"].as_f64().is_some(), "{row}");
        assert!(
            row["cpu_ms_per_change"]["total"].as_f64().unwrap() > 0.0,
            "{row}"
        );
        assert!(row["cpu_ms_per_change"]["nats"].as_f64().is_some(), "{row}");
        assert!(row["bus_msgs_per_change"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["delivered_frames"], row["expected_frames"], "{row}");
        assert_eq!(row["left_nothing_behind"], true, "{row}");
    }
    assert_eq!(rows[0]["efficiency"], 1.0);
    // The limit in force (cgroup quota, taskset or none) is said.
    assert!(
        !report["cpu_limit"].as_str().unwrap().is_empty(),
        "{report}"
    );
    let markdown = std::fs::read_to_string(out.join("bench-scale.md")).unwrap();
    assert!(
        markdown.contains("arbat bench scale --nodes 1,2 --cpu-per-node"),
        "{markdown}"
    );
    for name in [
        "bench-scale-throughput.svg",
        "bench-scale-efficiency.svg",
        "bench-scale-cost.svg",
        "bench-scale-bus.svg",
        "bench-scale-latency.svg",
    ] {
        assert!(markdown.contains(&format!("]({name})")), "{markdown}");
        svg_ok(&out.join(name));
    }
    let _ = std::fs::remove_dir_all(&out);
}
