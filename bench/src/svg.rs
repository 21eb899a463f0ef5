//! Hand-written SVG line charts for the reports (no plotting dependency): latency
//! percentiles over time, throughput and efficiency vs nodes, cost per event vs nodes.

use std::fmt::Write as _;

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart: title, axis labels and its lines.
#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Where the x axis has ticks (e.g. node counts); empty: five even steps from 0.
    pub x_ticks: Vec<f64>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 210.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Escapes text for SVG content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice_max(value: f64) -> f64 {
    if !value.is_finite() || value <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if value <= step * power {
            return step * power;
        }
    }
    10.0 * power
}

fn label(value: f64) -> String {
    if value == 0.0 {
        "0".into()
    } else if value.abs() >= 10.0 || value.fract() == 0.0 {
        format!("{:.0}", value)
    } else if value.abs() >= 1.0 {
        format!("{:.1}", value)
    } else {
        format!("{:.2}", value)
    }
}

impl Chart {
    /// Renders the chart; axes start at 0, empty or non-finite points are skipped.
    pub fn render(&self) -> String {
        let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
        let all: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().filter(finite).copied())
            .collect();
        let x_max = if self.x_ticks.is_empty() {
            nice_max(all.iter().map(|p| p.0).fold(0.0, f64::max))
        } else {
            self.x_ticks.iter().copied().fold(0.0, f64::max).max(1e-9)
        };
        let y_max = nice_max(all.iter().map(|p| p.1).fold(0.0, f64::max));
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let x = |v: f64| LEFT + v.max(0.0) / x_max * plot_w;
        let y = |v: f64| TOP + plot_h - v.max(0.0) / y_max * plot_h;
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(
            svg,
            r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            WIDTH / 2.0,
            escape(&self.title)
        );
        // Grid and tick labels: five steps on the y axis, the given ticks or five on the x axis.
        let x_ticks: Vec<f64> = if self.x_ticks.is_empty() {
            (0..=5).map(|i| x_max * f64::from(i) / 5.0).collect()
        } else {
            self.x_ticks.clone()
        };
        for tick in &x_ticks {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x(*tick),
                TOP + plot_h + 16.0,
                label(*tick)
            );
        }
        for i in 0..=5 {
            let fraction = f64::from(i) / 5.0;
            let gy = y(y_max * fraction);
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/>"##,
                LEFT + plot_w
            );
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                gy + 4.0,
                label(y_max * fraction)
            );
        }
        let _ = write!(
            svg,
            r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
        );
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 12.0,
            escape(&self.x_label)
        );
        let _ = write!(
            svg,
            r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
            TOP + plot_h / 2.0,
            TOP + plot_h / 2.0,
            escape(&self.y_label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let points: Vec<String> = series
                .points
                .iter()
                .filter(finite)
                .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
                .collect();
            if !points.is_empty() {
                let _ = write!(
                    svg,
                    r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                    points.join(" ")
                );
                for point in &points {
                    let (cx, cy) = point.split_once(',').unwrap_or(("0", "0"));
                    let _ = write!(
                        svg,
                        r#"<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>"#
                    );
                }
            }
            let ly = TOP + 10.0 + i as f64 * 18.0;
            let lx = LEFT + plot_w + 12.0;
            let _ = write!(
                svg,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/>"#,
                lx + 18.0
            );
            let _ = write!(
                svg,
                r#"<text x="{}" y="{:.1}">{}</text>"#,
                lx + 24.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// Checks that `svg` is well-formed XML as far as these charts go: balanced, properly nested
/// elements, quoted attributes, and no raw `<`/`&` in text. Used by the tests.
pub fn well_formed(svg: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg.trim();
    if !rest.starts_with("<svg") {
        return Err("does not start with <svg".into());
    }
    while !rest.is_empty() {
        let Some(open) = rest.find('<') else {
            check_text(rest)?;
            break;
        };
        check_text(&rest[..open])?;
        let close = rest[open..]
            .find('>')
            .ok_or_else(|| "unterminated tag".to_owned())?
            + open;
        let tag = &rest[open + 1..close];
        if let Some(name) = tag.strip_prefix('/') {
            match stack.pop() {
                Some(top) if top == name.trim() => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
        } else {
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().unwrap_or_default();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("bad element name in <{tag}>"));
            }
            if !body.matches('"').count().is_multiple_of(2) {
                return Err(format!("unbalanced quotes in <{tag}>"));
            }
            if !self_closing {
                stack.push(name.to_owned());
            }
        }
        rest = &rest[close + 1..];
        if stack.is_empty() {
            if !rest.trim().is_empty() {
                return Err("content after the root element".into());
            }
            return Ok(());
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(format!("unclosed elements: {stack:?}"))
    }
}

fn check_text(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        let entity = &rest[at..];
        let end = entity.find(';').ok_or("bare & in text")?;
        if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&&entity[..=end]) {
            return Err(format!("unknown entity {}", &entity[..=end]));
        }
        rest = &entity[end + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "p99 <latency> & more".into(),
            x_label: "seconds".into(),
            y_label: "ms".into(),
            series: vec![
                Series {
                    name: "arbat \"p99\"".into(),
                    points: vec![(0.0, 1.0), (1.0, 3.5), (2.0, f64::NAN), (3.0, 120.0)],
                },
                Series {
                    name: "relay".into(),
                    points: vec![(0.0, 0.5), (3.0, 0.7)],
                },
                Series {
                    name: "empty".into(),
                    points: vec![],
                },
            ],
            x_ticks: Vec::new(),
        }
    }

    #[test]
    fn charts_are_well_formed_and_escape_text() {
        let svg = chart().render();
        well_formed(&svg).unwrap();
        assert!(svg.contains("p99 &lt;latency&gt; &amp; more"), "{svg}");
        assert!(svg.contains("arbat &quot;p99&quot;"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2, "empty series drawn");
        // The NaN point is skipped, the others drawn.
        assert_eq!(svg.matches("<circle").count(), 5);
        // A chart with nothing to draw still renders.
        let empty = Chart {
            series: Vec::new(),
            ..chart()
        };
        well_formed(&empty.render()).unwrap();
        // Given ticks are drawn as they are.
        let nodes = Chart {
            x_ticks: vec![1.0, 2.0, 4.0],
            ..chart()
        };
        let svg = nodes.render();
        well_formed(&svg).unwrap();
        assert!(
            svg.contains(">4</text>") && !svg.contains(">0.80</text>"),
            "{svg}"
        );
    }

    #[test]
    fn checker_rejects_malformed_documents() {
        assert!(well_formed("<svg><g></svg>").is_err());
        assert!(well_formed("<svg><text>a & b</text></svg>").is_err());
        assert!(well_formed("<svg><text x=\"1>a</text></svg>").is_err());
        assert!(well_formed("<svg></svg><svg></svg>").is_err());
        assert!(well_formed("<svg><text>a &lt; b</text></svg>").is_ok());
    }

    #[test]
    fn axes_round_up_to_nice_values() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(0.9), 1.0);
        assert_eq!(nice_max(1234.0), 2000.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
    }
}
