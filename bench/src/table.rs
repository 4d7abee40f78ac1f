//! The figures as a table: each beside its target, and beside a peer's
//! (with the ratio) when one was measured; a verdict where there is a
//! target.

// The tables are the benchmarks' output.
#![allow(clippy::print_stdout)]

pub fn show_ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.is_infinite() => "missed".into(),
        Some(x) if x < 10.0 => format!("{x:.1} ms"),
        Some(x) => format!("{x:.0} ms"),
    }
}

pub fn show_pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.3} %"))
}

pub fn show_mib(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1} MiB"))
}

/// One row: figure, target, ours, upstream, and whether ours met the
/// target (None: no target, or not measured).
#[derive(Debug)]
pub struct Row {
    pub figure: String,
    pub target: String,
    pub ours: String,
    pub upstream: String,
    pub ratio: String,
    pub met: Option<bool>,
    /// Said after the verdict.
    pub why: &'static str,
}

pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// A row for a value where smaller is better.
pub fn row(
    figure: &str,
    target: Option<f64>,
    show_target: &str,
    ours: Option<f64>,
    upstream: Option<f64>,
    show: fn(Option<f64>) -> String,
) -> Row {
    Row {
        figure: figure.into(),
        target: show_target.into(),
        ours: show(ours),
        upstream: show(upstream),
        ratio: ratio(ours, upstream),
        met: target.and_then(|t| ours.map(|o| o <= t)),
        why: "",
    }
}

pub fn print_table(title: &str, rows: &[Row], upstream: bool) {
    println!("\n{title}");
    let mut cells: Vec<Vec<String>> = vec![{
        let mut h = vec!["figure".to_string(), "target".into(), "ours".into()];
        if upstream {
            h.extend(["upstream".into(), "ours/upstream".into()]);
        }
        h.push("verdict".into());
        h
    }];
    for r in rows {
        let mut c = vec![r.figure.clone(), r.target.clone(), r.ours.clone()];
        if upstream {
            c.extend([r.upstream.clone(), r.ratio.clone()]);
        }
        c.push(match r.met {
            Some(true) => format!("PASS{}", r.why),
            Some(false) => format!("FAIL{}", r.why),
            None => String::new(),
        });
        cells.push(c);
    }
    let cols = cells[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, c) in cells.iter().enumerate() {
        let line: Vec<String> = c
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        println!("  {}", line.join(" | ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("  {}", rule.join("-+-"));
        }
    }
}
