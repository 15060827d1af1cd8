//! The grid type, its shape check and its text outputs (CSV, JSON).

use attrpatch_onnx::error::{Error, Result};
use serde_json::{json, Value};
use std::path::Path;

/// One attribution grid, rows = layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// File stem, e.g. "heads" or "positions".
    pub name: String,
    /// E.g. "Attribution patching over attention heads".
    pub title: String,
    /// What the figure needs to be read alone: the hook, the metric and the model.
    pub subtitle: String,
    /// E.g. "Layer".
    pub row_label: String,
    /// E.g. "Head" or "Token position".
    pub col_label: String,
    /// "0", "1", ...
    pub row_names: Vec<String>,
    /// Head numbers, or "index token" for positions.
    pub col_names: Vec<String>,
    /// For positions: each column's token alone (figures draw it apart from its
    /// index); empty for heads.
    pub tokens: Vec<String>,
    /// E.g. "Norm. logit diff".
    pub value_label: String,
    /// `[rows][cols]`.
    pub values: Vec<Vec<f64>>,
}

impl Grid {
    /// Check the shape: at least one row and column, and `values` is rows x cols.
    pub fn validate(&self) -> Result<()> {
        let fail = |what: String| Err(Error::Input(format!("grid {:?}: {what}", self.name)));
        let (rows, cols) = (self.row_names.len(), self.col_names.len());
        if rows == 0 || cols == 0 {
            return fail(format!("needs at least one row and one column, got {rows} x {cols}"));
        }
        if self.values.len() != rows {
            return fail(format!("{} rows of values but {rows} row names", self.values.len()));
        }
        if let Some((i, row)) = self.values.iter().enumerate().find(|(_, r)| r.len() != cols) {
            return fail(format!("row {i} has {} values but there are {cols} column names", row.len()));
        }
        if !self.tokens.is_empty() && self.tokens.len() != cols {
            return fail(format!("{} tokens but {cols} columns", self.tokens.len()));
        }
        Ok(())
    }

    #[cfg(feature = "figures")]
    /// Largest |value| over the finite values, or 1 when there is none or it is 0,
    /// so the colour scale [-m, m] is never empty.
    pub(crate) fn abs_max(&self) -> f64 {
        let m = self.values.iter().flatten().filter(|v| v.is_finite()).fold(0.0, |m, v| v.abs().max(m));
        if m > 0.0 {
            m
        } else {
            1.0
        }
    }
}

/// CSV: a header (row label, then column names), then one line per row
/// (row name, then its values at full precision; "NaN", "inf", "-inf" as such).
pub fn write_csv(grid: &Grid, path: &Path) -> Result<()> {
    grid.validate()?;
    attrpatch_onnx::fsutil::write_atomic(path, csv_text(grid).as_bytes())
}

fn csv_text(grid: &Grid) -> String {
    let header = std::iter::once(&grid.row_label).chain(&grid.col_names).map(|s| csv_field(s));
    let mut out = header.collect::<Vec<_>>().join(",") + "\n";
    for (name, row) in grid.row_names.iter().zip(&grid.values) {
        let fields = std::iter::once(csv_field(name)).chain(row.iter().map(|&v| fmt_value(v)));
        out += &(fields.collect::<Vec<_>>().join(",") + "\n");
    }
    out
}

/// RFC 4180 quoting; fields with leading or trailing spaces are quoted too, so
/// GPT-2 tokens such as " Mary" keep their space in readers that trim.
fn csv_field(s: &str) -> String {
    let special = s.contains([',', '"', '\n', '\r']) || s.trim() != s;
    if special {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Shortest text that parses back to the same f64 (Rust's Display is shortest
/// round-trip); exponent form for tiny or huge magnitudes to avoid long zero runs.
fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() || a == 0.0 || (1e-5..1e16).contains(&a) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// The grid as JSON; non-finite values become null. Does not check the shape
/// (call `Grid::validate` first if the grid may be malformed).
pub fn grid_json(grid: &Grid) -> Value {
    let number = |v: f64| serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number);
    let values: Vec<Vec<Value>> = grid.values.iter().map(|row| row.iter().map(|&v| number(v)).collect()).collect();
    json!({
        "name": grid.name,
        "title": grid.title,
        "subtitle": grid.subtitle,
        "row_label": grid.row_label,
        "col_label": grid.col_label,
        "rows": grid.row_names,
        "cols": grid.col_names,
        "tokens": grid.tokens,
        "value_label": grid.value_label,
        "values": values,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A rows x cols grid named `name` with the given values.
    pub(crate) fn grid(name: &str, cols: &[&str], values: Vec<Vec<f64>>) -> Grid {
        Grid {
            name: name.into(),
            title: format!("Attribution patching over {name}"),
            subtitle: "hook: attention out-projection input · metric: logit diff · model: test.onnx".into(),
            row_label: "Layer".into(),
            col_label: if name == "heads" { "Head" } else { "Token position" }.into(),
            row_names: (0..values.len()).map(|i| i.to_string()).collect(),
            col_names: cols.iter().map(|s| s.to_string()).collect(),
            tokens: vec![],
            value_label: "Norm. logit diff".into(),
            values,
        }
    }

    /// A fresh folder under the system temp dir for one test.
    pub(crate) fn temp_dir(tag: &str) -> crate::test_dir::TestDir {
        crate::test_dir::TestDir::new(&format!("attrpatch-render-{}-{tag}", std::process::id()))
    }

    #[test]
    fn csv_quotes_and_precision() {
        let g = grid("positions", &["0 When", "1 a,\"b\"", " Mary"], vec![vec![0.1, -1e-7, f64::NAN]]);
        let dir = temp_dir("csv");
        let path = dir.join("positions.csv");
        write_csv(&g, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "Layer,0 When,\"1 a,\"\"b\"\"\",\" Mary\"\n0,0.1,-1e-7,NaN\n");
    }

    #[test]
    fn values_round_trip() {
        for v in [0.1, 1.0 / 3.0, -2.5e-9, 1e20, 123456.789, 0.0, f64::INFINITY, f64::NEG_INFINITY] {
            let s = fmt_value(v);
            assert_eq!(s.parse::<f64>().unwrap(), v, "{s}");
        }
    }

    #[test]
    fn json_shape() {
        let g = grid("heads", &["0", "1"], vec![vec![0.5, f64::INFINITY], vec![-0.25, 0.0]]);
        let j = grid_json(&g);
        assert_eq!(j["name"], "heads");
        assert_eq!(j["title"], "Attribution patching over heads");
        assert_eq!(j["row_label"], "Layer");
        assert_eq!(j["col_label"], "Head");
        assert_eq!(j["rows"], json!(["0", "1"]));
        assert_eq!(j["cols"], json!(["0", "1"]));
        assert_eq!(j["value_label"], "Norm. logit diff");
        assert_eq!(j["values"], json!([[0.5, null], [-0.25, 0.0]]));
    }

    #[test]
    fn validation_names_the_grid() {
        let cases = [
            grid("ragged", &["0", "1"], vec![vec![1.0, 2.0], vec![3.0]]),
            grid("empty", &[], vec![]),
            Grid { row_names: vec!["0".into()], ..grid("rowcount", &["0"], vec![vec![1.0], vec![2.0]]) },
        ];
        let dir = temp_dir("validate");
        for g in cases {
            let err = write_csv(&g, &dir.join("x.csv")).unwrap_err();
            assert!(matches!(err, Error::Input(_)), "{err:?}");
            assert!(err.to_string().contains(&format!("\"{}\"", g.name)), "{err}");
        }
        assert!(!dir.join("x.csv").exists());
    }
}
