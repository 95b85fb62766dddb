//! Charts as SVG written on the server (issue #22): no script and no build step, readable
//! without JavaScript, and what the page shows is what the history says. A chart is a few
//! polylines over evenly spaced points with its scale's top written on it; each series' points
//! are also in its `<title>` (screen readers, hover) and in `data-values` (tests).

use crate::views::traffic::TrafficView;
use std::fmt::Write as _;

/// Width and height of a chart's drawing, in SVG units (it scales with the page).
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 140.0;
/// Room above the lines for the scale's label.
const TOP: f64 = 26.0;

/// One line of a chart: a name (also its CSS class) and its values, oldest first.
pub struct Series<'a> {
    pub name: &'a str,
    pub class: &'a str,
    pub values: Vec<f64>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A number short enough for a label: 1.2k, 3.4M.
pub fn short(v: f64) -> String {
    let (v, unit) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    if v == v.trunc() || v.abs() >= 10.0 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.2}{unit}")
    }
}

/// A line chart of `series` titled `title`, its values in `unit` (`req/s`, `B/s`, `ms`, `%`);
/// `first` and `last` label the time axis.
pub fn line_chart(title: &str, unit: &str, series: &[Series], first: &str, last: &str) -> String {
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0_f64, f64::max);
    let scale = if top > 0.0 { top } else { 1.0 };
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {h}\" role=\"img\" aria-label=\"{t}\" \
         data-top=\"{top}\"><title>{t}</title>",
        h = HEIGHT + 26.0,
        t = escape(title),
    );
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"0\" y1=\"{b}\" x2=\"{WIDTH}\" y2=\"{b}\"/>\
         <text class=\"scale\" x=\"2\" y=\"18\">{} {}</text>",
        short(top),
        escape(unit),
        b = HEIGHT,
    );
    for s in series {
        let n = s.values.len();
        let step = if n > 1 { WIDTH / (n - 1) as f64 } else { 0.0 };
        let points: Vec<String> = s
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let y = HEIGHT - (v / scale) * (HEIGHT - TOP);
                format!("{:.1},{:.1}", i as f64 * step, y)
            })
            .collect();
        let values: Vec<String> = s.values.iter().map(|v| short(*v)).collect();
        let _ = write!(
            svg,
            "<polyline class=\"series {c}\" data-series=\"{name}\" data-values=\"{data}\" \
             points=\"{p}\"><title>{name}: {list}</title></polyline>",
            c = escape(s.class),
            name = escape(s.name),
            data = s
                .values
                .iter()
                .map(|v| format!("{v}"))
                .collect::<Vec<_>>()
                .join(" "),
            p = points.join(" "),
            list = values.join(", "),
        );
    }
    let _ = write!(
        svg,
        "<text class=\"time\" x=\"0\" y=\"{y}\">{}</text>\
         <text class=\"time\" x=\"{WIDTH}\" y=\"{y}\" text-anchor=\"end\">{}</text></svg>",
        escape(first),
        escape(last),
        y = HEIGHT + 22.0,
    );
    let legend: Vec<String> = series
        .iter()
        .map(|s| {
            format!(
                "<span class=\"key {}\">{}</span>",
                escape(s.class),
                escape(s.name)
            )
        })
        .collect();
    format!(
        "<figure class=\"chart\"><figcaption>{} <span class=\"legend\">{}</span></figcaption>{svg}</figure>",
        escape(title),
        legend.join(" ")
    )
}

/// A small line of `values` with no axis, for lists.
pub fn sparkline(values: &[f64]) -> String {
    let top = values.iter().copied().fold(0.0_f64, f64::max);
    let scale = if top > 0.0 { top } else { 1.0 };
    let (w, h) = (120.0, 24.0);
    let step = if values.len() > 1 {
        w / (values.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                h - 1.0 - (v / scale) * (h - 2.0)
            )
        })
        .collect();
    format!(
        "<svg class=\"sparkline\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"requests, \
         last hour (top {t}/min)\" data-top=\"{top}\"><polyline points=\"{p}\"/></svg>",
        t = short(top),
        p = points.join(" ")
    )
}

/// The charts of a history: requests per second by status class, bandwidth, error rate and
/// (with `latency`) time to first byte.
pub fn traffic_charts(h: &TrafficView, latency: bool) -> Vec<String> {
    let per_s = h.step_seconds as f64;
    let time = |i: usize| {
        h.points
            .get(i)
            .map(|p| p.time.get(11..16).unwrap_or(&p.time).to_string() + " UTC")
            .unwrap_or_default()
    };
    let (first, last) = (time(0), time(h.points.len().saturating_sub(1)));
    let col = |f: &dyn Fn(&crate::views::traffic::Span) -> f64| -> Vec<f64> {
        h.points.iter().map(|p| f(&p.span)).collect()
    };
    let mut charts = vec![
        line_chart(
            "Requests per second",
            "req/s",
            &[
                Series {
                    name: "2xx",
                    class: "c2xx",
                    values: col(&|s| s.requests.c2 as f64 / per_s),
                },
                Series {
                    name: "3xx",
                    class: "c3xx",
                    values: col(&|s| s.requests.c3 as f64 / per_s),
                },
                Series {
                    name: "4xx",
                    class: "c4xx",
                    values: col(&|s| s.requests.c4 as f64 / per_s),
                },
                Series {
                    name: "5xx",
                    class: "c5xx",
                    values: col(&|s| s.requests.c5 as f64 / per_s),
                },
            ],
            &first,
            &last,
        ),
        line_chart(
            "Bandwidth",
            "B/s",
            &[
                Series {
                    name: "in",
                    class: "bytes-in",
                    values: col(&|s| s.bytes_in as f64 / per_s),
                },
                Series {
                    name: "out",
                    class: "bytes-out",
                    values: col(&|s| s.bytes_out as f64 / per_s),
                },
            ],
            &first,
            &last,
        ),
        line_chart(
            "Error rate",
            "% 5xx",
            &[Series {
                name: "5xx share",
                class: "c5xx",
                values: col(&|s| s.error_rate * 100.0),
            }],
            &first,
            &last,
        ),
    ];
    if latency {
        charts.push(line_chart(
            "Time to first byte",
            "ms",
            &[
                Series {
                    name: "p50",
                    class: "p50",
                    values: col(&|s| s.p50_ms.unwrap_or(0.0)),
                },
                Series {
                    name: "p95",
                    class: "p95",
                    values: col(&|s| s.p95_ms.unwrap_or(0.0)),
                },
            ],
            &first,
            &last,
        ));
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_every_point_under_its_scale() {
        let svg = line_chart(
            "Requests <per> second",
            "req/s",
            &[Series {
                name: "2xx",
                class: "c2xx",
                values: vec![0.0, 5.0, 10.0],
            }],
            "10:00 UTC",
            "11:00 UTC",
        );
        assert!(
            svg.contains("points=\"0.0,140.0 300.0,83.0 600.0,26.0\""),
            "{svg}"
        );
        assert!(svg.contains("data-values=\"0 5 10\""), "{svg}");
        assert!(svg.contains(">10 req/s</text>"), "{svg}");
        assert!(
            svg.contains("Requests &lt;per&gt; second"),
            "escaped: {svg}"
        );
        // Nothing counted: a flat line at the bottom, not a division by zero.
        let empty = sparkline(&[0.0, 0.0]);
        assert!(empty.contains("points=\"0.0,23.0 120.0,23.0\""), "{empty}");
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(1.5), "1.50");
        assert_eq!(short(1500.0), "1.50k");
        assert_eq!(short(25_000_000.0), "25M");
    }
}
