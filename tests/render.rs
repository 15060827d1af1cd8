//! What a user looks at: the figures (PNG and SVG from one drawing) and
//! report.html, loaded in a real browser (headless Chromium). The outputs are
//! kept under target/tmp/render/ (the screenshots are CI artifacts).

use crate::common::root;
use regex::Regex;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const IOI_MODEL: &str = "models/ioi-gpt2/model.onnx";

/// A folder that outlives the test, so CI can keep what is in it.
fn artifact_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("render").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn attrpatch(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(args).current_dir(root()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "attrpatch {args:?} failed:\n{text}");
    o
}

/// `attrpatch run --per-prompt` on the bundled IOI model, once for all tests here.
fn run_out() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = artifact_dir("run");
        attrpatch(&["run", "--model", IOI_MODEL, "--device", "cpu", "--per-prompt", "--out", d.to_str().unwrap()]);
        d
    })
}

/// `attrpatch compare --positions --ig-steps 2`, once.
fn compare_out() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = artifact_dir("compare");
        let out = d.to_str().unwrap();
        attrpatch(&[
            "compare",
            "--model",
            IOI_MODEL,
            "--device",
            "cpu",
            "--positions",
            "--ig-steps",
            "2",
            "--out",
            out,
        ]);
        d
    })
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The SVG's text elements: (x, text), in document order.
fn svg_texts(svg: &str) -> Vec<(f64, String)> {
    let re = Regex::new(r#"(?s)<text x="([-0-9.]+)"[^>]*>(.*?)</text>"#).unwrap();
    re.captures_iter(svg).map(|c| (c[1].parse().unwrap(), unescape(c[2].trim()))).collect()
}

/// The SVG's filled rectangles: (x, y, width, height, fill).
fn svg_rects(svg: &str) -> Vec<(i64, i64, i64, i64, String)> {
    let re =
        Regex::new(r#"<rect x="(-?\d+)" y="(-?\d+)" width="(\d+)" height="(\d+)" opacity="1" fill="(#[0-9A-F]{6})""#)
            .unwrap();
    re.captures_iter(svg)
        .map(|c| {
            (c[1].parse().unwrap(), c[2].parse().unwrap(), c[3].parse().unwrap(), c[4].parse().unwrap(), c[5].into())
        })
        .collect()
}

/// The colour bars' tick values: numeric labels sharing one x, one of them negative
/// (only a colour bar has negative labels), one list per bar.
fn colour_bar_ticks(svg: &str) -> Vec<Vec<f64>> {
    let mut by_x: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
    for (x, t) in svg_texts(svg) {
        if let Ok(v) = t.parse::<f64>() {
            by_x.entry(x as i64).or_default().push(v);
        }
    }
    by_x.into_values().filter(|vs| vs.len() >= 3 && vs.iter().any(|&v| v < 0.0)).collect()
}

/// Ticks are round: evenly spaced by 1, 2 or 5 times a power of ten, 0 among them.
fn assert_round(ticks: &[f64]) {
    let mut t = ticks.to_vec();
    t.sort_by(f64::total_cmp);
    assert!(t.contains(&0.0), "no 0 tick: {t:?}");
    let step = t[1] - t[0];
    assert!(t.windows(2).all(|w| ((w[1] - w[0]) - step).abs() < 1e-9 * step.max(1e-300)), "uneven: {t:?}");
    let mantissa = step / 10f64.powf(step.log10().floor());
    assert!([1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6), "step {step} is not round: {t:?}");
}

/// The first rows x cols square rectangles of the SVG: the heatmap cells in row-major order.
fn cells(svg: &str, rows: usize, cols: usize) -> Vec<(i64, i64, i64, String)> {
    let (w, _) = svg_size(svg);
    let found: Vec<_> = svg_rects(svg)
        .into_iter()
        .filter(|r| r.2 == r.3 && r.2 >= 8 && r.2 < w)
        .map(|r| (r.0, r.1, r.2, r.4))
        .collect();
    assert!(found.len() >= rows * cols, "{} cells, want {rows} x {cols}", found.len());
    found[..rows * cols].to_vec()
}

fn svg_size(svg: &str) -> (i64, i64) {
    let c = Regex::new(r#"<svg width="(\d+)" height="(\d+)""#).unwrap().captures(svg).expect("an <svg> with a size");
    (c[1].parse().unwrap(), c[2].parse().unwrap())
}

fn values(grid: &Value) -> Vec<Vec<f64>> {
    grid["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect())
        .collect()
}

/// The PNG and the SVG of one figure agree with each other and with the grid.
fn check_heatmap(dir: &Path, grid: &Value) {
    let name = grid["name"].as_str().unwrap();
    let svg = std::fs::read_to_string(dir.join(format!("{name}.svg"))).unwrap();
    let img = image::open(dir.join(format!("{name}.png"))).unwrap().to_rgb8();
    let (w, h) = svg_size(&svg);
    assert_eq!((img.width() as i64, img.height() as i64), (w, h), "PNG and SVG sizes differ");
    assert!((300..1600).contains(&w) && (200..1000).contains(&h), "{name}: {w} x {h}");

    // The text is text: title, subtitle (hook, metric, model), tick and token labels.
    let texts: Vec<String> = svg_texts(&svg).into_iter().map(|(_, t)| t).collect();
    // Titles wrap: one line of all the text.
    let all = texts.join(" ");
    for want in ["hook: attention out-projection input", "metric: normalised logit diff", "ioi-gpt2/model.onnx"] {
        assert!(all.contains(want), "{name}.svg lacks '{want}':\n{all}");
    }
    assert!(all.contains(grid["title"].as_str().unwrap()), "{name}.svg lacks its title:\n{all}");
    for (i, col) in grid["cols"].as_array().unwrap().iter().enumerate() {
        let label = match grid["tokens"].get(i) {
            Some(token) => token.as_str().unwrap().trim().to_string(),
            None => col.as_str().unwrap().to_string(),
        };
        assert!(texts.iter().any(|t| t.trim() == label), "{name}.svg lacks column label '{label}'");
        assert!(texts.contains(&i.to_string()), "{name}.svg lacks column number {i}");
    }
    let bars = colour_bar_ticks(&svg);
    assert_eq!(bars.len(), 1, "{name}.svg: one colour bar, got {bars:?}");
    assert_round(&bars[0]);

    // Pixel colours of the cells: blue for the largest positive, red for a clearly
    // negative one, near white for one near zero.
    let v = values(grid);
    let (rows, cols) = (v.len(), v[0].len());
    let m = v.iter().flatten().fold(0f64, |m, x| m.max(x.abs()));
    let cells = cells(&svg, rows, cols);
    let mut seen = [false; 3];
    for (k, &(x, y, size, _)) in cells.iter().enumerate() {
        let val = v[k / cols][k % cols];
        let [r, g, b] = img.get_pixel((x + size / 2) as u32, (y + size / 2) as u32).0.map(i32::from);
        if val > 0.5 * m {
            assert!(b > r + 60 && b > g, "{name} cell {k} = {val} (max {m}) is not blue: {r},{g},{b}");
            seen[0] = true;
        } else if val < -0.5 * m {
            assert!(r > b + 60 && r > g, "{name} cell {k} = {val} is not red: {r},{g},{b}");
            seen[1] = true;
        } else if val.abs() < 0.01 * m {
            assert!(r.min(g).min(b) >= 235, "{name} cell {k} = {val} is not near white: {r},{g},{b}");
            seen[2] = true;
        }
    }
    assert!(seen[0] && seen[2], "{name}: no strongly positive or no near-zero cell to check: {v:?}");

    // Cropped: the content reaches within a margin of every edge.
    let ink: Vec<(u32, u32)> =
        img.enumerate_pixels().filter(|(_, _, p)| p.0.iter().any(|&c| c < 200)).map(|(x, y, _)| (x, y)).collect();
    let (x0, x1) = (ink.iter().map(|p| p.0).min().unwrap(), ink.iter().map(|p| p.0).max().unwrap());
    let (y0, y1) = (ink.iter().map(|p| p.1).min().unwrap(), ink.iter().map(|p| p.1).max().unwrap());
    let slack = 30;
    assert!(
        x0 < slack && y0 < slack && x1 + slack > img.width() && y1 + slack > img.height(),
        "{name}.png: content {x0}..{x1} x {y0}..{y1} in a {} x {} canvas",
        img.width(),
        img.height()
    );
}

#[test]
fn run_figures_are_png_and_svg_of_the_grids() {
    let dir = run_out();
    let results = json(&dir.join("results.json"));
    check_heatmap(dir, &results["heads"]);
    check_heatmap(dir, &results["positions"]);
}

#[test]
fn compare_figures_share_one_colour_bar_and_label_the_misses() {
    let dir = compare_out();
    for name in ["heads", "positions"] {
        let svg = std::fs::read_to_string(dir.join(format!("compare-{name}.svg"))).unwrap();
        let img = image::open(dir.join(format!("compare-{name}.png"))).unwrap().to_rgb8();
        assert_eq!((img.width() as i64, img.height() as i64), svg_size(&svg));
        let bars = colour_bar_ticks(&svg);
        assert_eq!(bars.len(), 1, "compare-{name}.svg: one shared colour bar, got {bars:?}");
        assert_round(&bars[0]);
        let texts: Vec<String> = svg_texts(&svg).into_iter().map(|(_, t)| t).collect();
        for panel in ["Attribution patching", "Integrated gradients (2 steps)", "Activation patching (exact)"] {
            assert!(texts.iter().any(|t| t == panel), "compare-{name}.svg lacks panel '{panel}': {texts:?}");
        }
    }
    // The scatter names the attribution's largest miss beside its point.
    let summary = json(&dir.join("compare.json"));
    let miss = &summary["estimates"]["attribution"]["positions"]["largest_misses"][0];
    let prefix = format!("L{} {} '", miss["layer"], miss["index"]);
    let svg = std::fs::read_to_string(dir.join("scatter-positions.svg")).unwrap();
    let texts: Vec<String> = svg_texts(&svg).into_iter().map(|(_, t)| t).collect();
    assert!(texts.iter().any(|t| t.starts_with(&prefix)), "no label '{prefix}...' in {texts:?}");
    let circles = svg.matches("<circle").count();
    let cells = 3 * 14; // the bundled model: 3 layers x 14 positions, two estimates
    assert!(circles >= 2 * cells, "{circles} circles for {cells} cells x 2 estimates");
    let img = image::open(dir.join("scatter-positions.png")).unwrap().to_rgb8();
    assert_eq!((img.width() as i64, img.height() as i64), svg_size(&svg));
    // The recall figures: a panel per k, a legend line per estimate with its costs from compare.json.
    for g in summary["recall"].as_array().unwrap() {
        let name = g["grid"].as_str().unwrap();
        let svg = std::fs::read_to_string(dir.join(format!("recall-{name}.svg"))).unwrap();
        let img = image::open(dir.join(format!("recall-{name}.png"))).unwrap().to_rgb8();
        assert_eq!((img.width() as i64, img.height() as i64), svg_size(&svg));
        let texts: Vec<String> = svg_texts(&svg).into_iter().map(|(_, t)| t).collect();
        for k in g["ks"].as_array().unwrap() {
            assert!(texts.iter().any(|t| *t == format!("top {k}")), "recall-{name}.svg lacks panel 'top {k}'");
        }
        for m in g["methods"].as_array().unwrap() {
            let at: Vec<String> =
                m["curves"].as_array().unwrap().iter().map(|c| c["full_recall_at"].to_string()).collect();
            let want = format!("{}: full recall after {} of", m["label"].as_str().unwrap(), at.join(", "));
            assert!(texts.iter().any(|t| t.starts_with(&want)), "recall-{name}.svg lacks '{want}': {texts:?}");
        }
    }
}

/// The browser: $CHROMIUM, else chromium or chromium-browser on the PATH. In CI
/// (CI set) a missing browser fails the test; elsewhere it is skipped with a note.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("CHROMIUM").map(PathBuf::from).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium not found (CI is set, so this fails): .ci/run installs Debian's chromium package"
        );
        eprintln!("note: chromium not found; report.html browser test skipped (apt-get install chromium)");
    }
    found
}

/// What Chromium saw: the DOM after the page's script ran with #selfcheck, and its log.
struct Loaded {
    dom: String,
    log: String,
}

fn load(browser: &Path, page: &Path) -> Loaded {
    let url = format!("file://{}#selfcheck", page.canonicalize().unwrap().display());
    let o = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"])
        .args(["--virtual-time-budget=5000", "--dump-dom", &url])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "chromium failed on {url}:\n{log}");
    Loaded { dom: String::from_utf8_lossy(&o.stdout).into_owned(), log }
}

fn screenshot(browser: &Path, page: &Path, height: u32) -> PathBuf {
    let shot = page.with_file_name("report-screenshot.png");
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let o = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"])
        .arg(format!("--window-size=1280,{height}"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(o.status.success(), "chromium --screenshot failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let img = image::open(&shot).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (1280, height));
    // A drawn page has text, tables and RdBu cells; a blank or error page has a few colours.
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 200, "screenshot {} has {} colours", shot.display(), colours.len());
    println!("screenshot: {}", shot.display());
    shot
}

impl Loaded {
    fn pre(&self, id: &str) -> String {
        let re = Regex::new(&format!(r#"(?s)<pre id="{id}"[^>]*>(.*?)</pre>"#)).unwrap();
        unescape(&re.captures(&self.dom).unwrap_or_else(|| panic!("no #{id} in the DOM"))[1])
    }

    /// No script error (the page's own catcher) and no console error (Chromium's log).
    fn assert_clean(&self) {
        assert_eq!(self.pre("errors").trim(), "", "script errors");
        let console: Vec<&str> = self.log.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect();
        assert!(console.is_empty(), "console messages:\n{}", console.join("\n"));
        assert!(self.dom.contains(r#"data-ready="true""#), "the page's script did not finish");
    }

    /// The cells of panel `panel` of grid `grid`: (row, col) -> value, from their data attributes.
    fn cells(&self, grid: &str, panel: usize) -> Vec<(usize, usize, f64)> {
        let re = Regex::new(&format!(
            r#"class="cell" data-grid="{grid}" data-panel="{panel}" data-row="(\d+)" data-col="(\d+)" data-value="([^"]+)""#
        ))
        .unwrap();
        re.captures_iter(&self.dom)
            .map(|c| (c[1].parse().unwrap(), c[2].parse().unwrap(), c[3].parse().unwrap()))
            .collect()
    }
}

/// The heatmap of `grid` in the page has its cells with its values, and hovering
/// its largest cell shows the row, the column (with its token) and the value.
fn check_grid_in_page(page: &Loaded, grid: &Value, panel: usize) {
    let name = grid["name"].as_str().unwrap();
    let v = values(grid);
    let cells = page.cells(name, panel);
    assert_eq!(cells.len(), v.len() * v[0].len(), "{name}: L x H cells");
    for &(r, c, x) in &cells {
        assert_eq!(x, v[r][c], "{name} cell ({r}, {c})");
    }
    let check = page.pre("selfcheck");
    let line = check
        .lines()
        .find(|l| l.starts_with(&format!("hover {name}/{panel} ")))
        .unwrap_or_else(|| panic!("no hover line for {name}/{panel} in:\n{check}"));
    let parts: Vec<&str> = line.splitn(5, ' ').collect();
    let (r, c): (usize, usize) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
    let tip = parts[4];
    let col = match grid["tokens"].get(c) {
        Some(t) => format!("position {c} '{}'", t.as_str().unwrap()),
        None => format!("head {c}"),
    };
    let prefix = format!("Layer {r}, {col}: ");
    assert!(tip.starts_with(&prefix), "tooltip '{tip}' should start with '{prefix}'");
    let shown: f64 = tip[prefix.len()..].parse().unwrap();
    assert!((shown - v[r][c]).abs() <= 1e-3 * v[r][c].abs(), "tooltip {shown} vs {}", v[r][c]);
    let max = v.iter().flatten().fold(0f64, |m, x| m.max(x.abs()));
    assert_eq!(v[r][c].abs(), max, "the self-check hovers the largest cell");
    assert!(check.contains("tip hidden after mouseout: true"), "{check}");
}

#[test]
fn report_html_works_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let dir = run_out();
    let page = dir.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing is fetched.
    for external in ["<script src", "<link", "http://", "https://", "@import"] {
        let hits: Vec<&str> =
            html.lines().filter(|l| l.contains(external) && !l.contains("www.w3.org/2000/svg")).collect();
        assert!(hits.is_empty(), "report.html refers outside itself ({external}): {hits:?}");
    }
    let loaded = load(&browser, &page);
    loaded.assert_clean();
    let results = json(&dir.join("results.json"));
    check_grid_in_page(&loaded, &results["heads"], 0);
    check_grid_in_page(&loaded, &results["positions"], 0);
    // Each grid has its own title, and the page says the two are on different colour scales.
    for grid in ["heads", "positions"] {
        let title = results[grid]["title"].as_str().unwrap();
        assert!(loaded.dom.contains(&format!("<h3>{title}</h3>")), "no title '{title}' above the {grid} grid");
    }
    assert!(
        loaded.dom.contains(r#"id="scales""#) && loaded.dom.contains("its own colour scale"),
        "no note on the colour scales"
    );
    // Baselines, prompts with answers and per-pair logit differences, options, timings.
    let text = unescape(&Regex::new(r"<[^>]+>").unwrap().replace_all(&loaded.dom, " "));
    for want in ["Baselines", "Prompts", "Model and options", "Timings", "models/ioi-gpt2/model.onnx", "26.2", "-26.2"]
    {
        assert!(text.contains(want), "report lacks '{want}'");
    }
    let per_prompt: Vec<Value> = std::fs::read_to_string(dir.join("per_prompt.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, p) in results["prompts"].as_array().unwrap().iter().enumerate() {
        assert!(text.contains(p["clean"].as_str().unwrap()), "prompt {i} missing");
        let ld = per_prompt[i]["clean_metric"].as_f64().unwrap();
        assert!(
            text.contains(&format!(
                "{}",
                (ld * 10f64.powi(3 - ld.abs().log10().floor() as i32)).round()
                    / 10f64.powi(3 - ld.abs().log10().floor() as i32)
            )),
            "pair {i}'s clean logit diff {ld} missing"
        );
    }
    // --per-prompt: a selector with every pair, which shows that pair's grids.
    let options = loaded.dom.matches("<option").count();
    assert_eq!(options, 1 + per_prompt.len(), "pair selector options");
    let check = loaded.pre("selfcheck");
    let line = check.lines().find(|l| l.starts_with("pair ")).unwrap_or_else(|| panic!("no pair line in:\n{check}"));
    let (index, cells) = line["pair ".len()..].split_once(" heads ").unwrap();
    let pair = &per_prompt[index.parse::<usize>().unwrap()];
    let want: Vec<f64> =
        values(&serde_json::json!({ "values": pair["grid"]["heads"] })).into_iter().flatten().collect();
    let shown: Vec<f64> = cells.split(',').map(|v| v.parse().unwrap()).collect();
    assert_eq!(shown, want, "pair {index}'s heads grid in the page");
    assert_ne!(shown, values(&results["heads"]).concat(), "the selector changed nothing");
    screenshot(&browser, &page, 1500);
}

#[test]
fn compare_report_html_works_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let dir = compare_out();
    let page = dir.join("report.html");
    let loaded = load(&browser, &page);
    loaded.assert_clean();
    // The panels side by side: attribution, IG, exact, each with its grid's values.
    for (panel, method) in ["attribution", "ig", "exact"].iter().enumerate() {
        let results = json(&dir.join(method).join("results.json"));
        check_grid_in_page(&loaded, &results["heads"], panel);
        check_grid_in_page(&loaded, &results["positions"], panel);
        assert!(dir.join(method).join("report.html").is_file(), "{method}/report.html");
    }
    let text = unescape(&Regex::new(r"<[^>]+>").unwrap().replace_all(&loaded.dom, " "));
    let summary = json(&dir.join("compare.json"));
    let pearson = summary["estimates"]["attribution"]["positions"]["pearson"].as_f64().unwrap();
    assert!(text.contains(&format!("Pearson {pearson:.3}")), "scatter legend lacks Pearson {pearson:.3}");
    assert!(text.contains("Largest misses: Attribution patching"), "no misses table");
    // The page's script text holds these phrases too: count the drawn elements.
    assert_eq!(
        loaded.dom.matches("<h3>Recall of exact patching's top nodes</h3>").count(),
        2,
        "a recall section per grid"
    );
    assert_eq!(loaded.dom.matches(r#"<div class="figure recall"><svg"#).count(), 2, "a recall figure per grid");
    let check = loaded.pre("selfcheck");
    assert!(check.lines().any(|l| l.starts_with("point ") && l.contains("estimate") && l.contains("exact")), "{check}");
    screenshot(&browser, &page, 2200);
}

/// `run --diagnostic`: the page draws the diagnostic's section, the bound and a
/// row per subset, the largest marked, without a script error.
#[test]
fn the_diagnostic_section_works_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let d = artifact_dir("diagnostic");
    let out = d.to_str().unwrap();
    attrpatch(&[
        "run",
        "--model",
        IOI_MODEL,
        "--device",
        "cpu",
        "--diagnostic",
        "6",
        "--diagnostic-top",
        "4",
        "--out",
        out,
    ]);
    let loaded = load(&browser, &d.join("report.html"));
    loaded.assert_clean();
    let diag = json(&d.join("diagnostic.json"));
    let section = Regex::new(r#"(?s)<h2>Diagnostic: what the top heads missed</h2>(.*?)</table>"#).unwrap();
    let drawn = unescape(&section.captures(&loaded.dom).expect("no diagnostic section drawn")[1]);
    assert!(drawn.contains(diag["bound"].as_str().unwrap()), "the bound is not in the section");
    assert_eq!(drawn.matches("<tr>").count(), 1 + 6, "a header and a row per subset");
    assert!(drawn.contains(&format!("{} (largest)", diag["max_subset"])), "the largest subset is not marked");
}

/// A run whose baselines are noise (the random fixture's logit differences are
/// ~3e-4) shows its warnings at the top of the page; the IOI run shows none.
#[test]
fn report_html_shows_the_baseline_warnings() {
    let Some(browser) = chromium() else { return };
    let dir = artifact_dir("noise-run");
    let o = attrpatch(&[
        "run",
        "--device",
        "cpu",
        "--model",
        root().join("models/gpt2-tiny-random.onnx").to_str().unwrap(),
        "--tokenizer",
        root().join("models/tokenizer.json").to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let loaded = load(&browser, &dir.join("report.html"));
    loaded.assert_clean();
    let warnings = Regex::new(r#"(?s)<div class="warnings" id="warnings">(.*?)</div>"#).unwrap();
    let block = warnings.captures(&loaded.dom).map(|c| unescape(&c[1])).unwrap_or_default();
    assert!(block.contains("differ by only"), "no baseline warning in the page: {block:?}");
    let ioi = load(&browser, &run_out().join("report.html"));
    assert!(!ioi.dom.contains(r#"id="warnings""#), "the IOI run's page shows warnings");
}

// Edges: the circuit figure, the faithfulness curve and report.html's Edges
// section, on synthetic GPT-2-small-sized edge scores (the scorer is separate).

use attrpatch::edges::{scores::node_scores, EdgeScore, EdgeScores, Topology};
use attrpatch::render::{write_circuit, write_faithfulness, write_report_html_with_edges, EdgeReport};

const GPT2_SMALL: Topology = Topology { layers: 12, heads: 12, kv_heads: 12, parallel: false };

/// Every edge of `t` with a seeded heavy-tailed score (log-normal |score|: a few
/// large, most near zero; both signs), as an edge scorer would give them.
fn synthetic_edges(t: Topology, label: &str) -> EdgeScores {
    let mut rng = crate::common::rng::Rng::seeded(label);
    let edges: Vec<EdgeScore> = t
        .edges()
        .into_iter()
        .map(|(w, r)| {
            // Log-normal |score| (Box-Muller), negative one time in three.
            let (u, v, sign) = (1.0 - rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0));
            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            let score = if sign < 1.0 / 3.0 { -1.0 } else { 1.0 } * (1.5 * z).exp() * 1e-3;
            EdgeScore { from: w.to_string(), to: r.to_string(), score }
        })
        .collect();
    EdgeScores {
        method: "EAP-IG".into(),
        ig_steps: 5,
        convention: "denoising".into(),
        ablation: "patching".into(),
        metric: "logit diff".into(),
        layers: t.layers,
        heads: t.heads,
        kv_heads: t.kv_heads,
        parallel: t.parallel,
        nodes: node_scores(&edges),
        edges,
    }
}

/// Edges by |score|, largest first, ties in table order (the circuit's ranking).
fn by_abs(s: &EdgeScores) -> Vec<&EdgeScore> {
    let mut v: Vec<&EdgeScore> = s.edges.iter().collect();
    v.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()));
    v
}

const FAITHFULNESS: [(usize, f64); 7] =
    [(1, 0.04), (10, 0.31), (30, 0.62), (100, 0.86), (300, 0.93), (1000, 0.97), (32491, 1.0)];

/// circuit.png/svg at K = 20 and 200, and faithfulness.png/svg, kept under
/// target/tmp/render/circuit for a look.
#[test]
fn circuit_and_faithfulness_figures_are_drawn() {
    let s = synthetic_edges(GPT2_SMALL, "circuit figure");
    let dir = artifact_dir("circuit");
    for k in [20, 200] {
        let sub = dir.join(format!("k{k}"));
        std::fs::create_dir_all(&sub).unwrap();
        let written = write_circuit(&sub, &s, k).unwrap();
        assert_eq!(written, [sub.join("circuit.png"), sub.join("circuit.svg")]);
        let svg = std::fs::read_to_string(&written[1]).unwrap();
        // One curve per kept edge, and the legend's five sample strokes.
        assert_eq!(svg.matches("<polyline").count(), k + 5, "K = {k}");
        let texts: Vec<String> = svg_texts(&svg).into_iter().map(|(_, t)| t).collect();
        for e in by_abs(&s).into_iter().take(k) {
            assert!(texts.contains(&e.from), "K = {k}: writer {} has no box", e.from);
            let reader_box = e.to.trim_end_matches(".q").trim_end_matches(".k").trim_end_matches(".v");
            assert!(texts.iter().any(|t| t == reader_box), "K = {k}: reader {} has no box", e.to);
        }
        assert!(texts.iter().any(|t| t.contains(&format!("the top {k} of 32491 edges"))), "{texts:?}");
        let img = image::open(&written[0]).unwrap().to_rgb8();
        assert_eq!((img.width() as i64, img.height() as i64), svg_size(&svg));
        println!("circuit K = {k}: {} ({} x {})", written[0].display(), img.width(), img.height());
    }
    let written = write_faithfulness(&dir, &FAITHFULNESS, &s).unwrap();
    let svg = std::fs::read_to_string(&written[1]).unwrap();
    let img = image::open(&written[0]).unwrap().to_rgb8();
    assert_eq!((img.width() as i64, img.height() as i64), svg_size(&svg));
    assert_eq!(svg.matches("<circle").count(), FAITHFULNESS.len(), "one marker per point");
}

/// A page with GPT-2 small's 32,491 edges: the table sorts and filters, shows
/// one page of rows at a time, and the slider redraws the circuit with K edges
/// between exactly the boxes they touch.
#[test]
fn edges_section_works_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let s = synthetic_edges(GPT2_SMALL, "edges page");
    let (page, loaded) = edges_page(&browser, &s, "edges-page");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: the only address is the SVG namespace of the embedded curve.
    assert_eq!(html.matches("http").count(), html.matches("http://www.w3.org/2000/svg").count(), "an outside address");
    println!("report.html with 32491 edges: {} bytes", html.len());
    let check = loaded.pre("selfcheck");
    let line = |prefix: &str| selfcheck_line(&check, prefix);
    let numbers = |s: String| -> Vec<f64> { s.split(',').map(|v| v.parse().unwrap()).collect() };
    let ranked = by_abs(&s);
    let first = |v: &[&EdgeScore]| v.iter().take(5).map(|e| e.score).collect::<Vec<f64>>();
    // One page of rows in the DOM; sorted by |score| at first, then by score both ways.
    assert_eq!(line("edges rows"), "100 of 32491");
    assert_eq!(numbers(line("edges default")), first(&ranked));
    let mut by_score = ranked.clone();
    by_score.sort_by(|a, b| b.score.total_cmp(&a.score));
    assert_eq!(numbers(line("edges score-desc")), first(&by_score));
    by_score.reverse();
    assert_eq!(numbers(line("edges score-asc")), first(&by_score));
    assert_eq!(line("edges from-asc"), "a0.h0,a0.h0,a0.h0");
    assert_eq!(line("edges page-2 ranks"), "101-200");
    // Filters: a node, a node and logits, every query input.
    let count = |f: &dyn Fn(&EdgeScore) -> bool| s.edges.iter().filter(|e| f(e)).count().to_string();
    assert_eq!(line("edges filter logits:"), count(&|e| e.to == "logits"));
    assert_eq!(line("edges filter a1.h2 logits:"), "1");
    assert_eq!(line("edges filter .q:"), count(&|e| e.to.ends_with(".q")));
    // Without grouped-query attention a head keeps its own k: there are no key/value heads to name.
    assert_eq!(line("edges filter a1.h0.k:"), count(&|e| e.to == "a1.h0.k"));
    assert_eq!(line("edges filter a1.kv0.k:"), "0");
    // The slider: K edges, the rows of the circuit shaded, and exactly the touched boxes.
    for k in [1, 10, 500] {
        let mut nodes: Vec<String> = ["input".to_string(), "logits".to_string()].into();
        for e in &ranked[..k] {
            nodes.push(e.from.clone());
            nodes.push(e.to.trim_end_matches(".q").trim_end_matches(".k").trim_end_matches(".v").to_string());
        }
        nodes.sort();
        nodes.dedup();
        let want = format!("paths {k} marked {} nodes {}", k.min(100), nodes.join(","));
        assert_eq!(line(&format!("edges k {k}:")), want, "K = {k}");
    }
    // Hovering the top edge's writer lights exactly its edges among the 30 drawn.
    let writer = &ranked[0].from;
    let out = ranked[..30].iter().filter(|e| &e.from == writer).count();
    let into = |e: &&&EdgeScore| e.to == *writer || e.to.starts_with(&format!("{writer}."));
    let lit = out + ranked[..30].iter().filter(into).count();
    let hover = line(&format!("edges hover {writer}:"));
    assert_eq!(hover, format!("{lit} lit, {writer}: {out} edges out, {} in", lit - out));
    // The page opens at the report's K with the embedded curve; edges and scores
    // are coloured by sign (RdBu's blue end positive, red end negative).
    assert!(loaded.dom.contains(r#"data-k="30""#), "the circuit opens at K = 30");
    let paths = Regex::new(r#"stroke="(rgb\([0-9,]+\))"[^>]*class="edge"[^>]*data-score="([^"]+)""#).unwrap();
    let drawn: Vec<(String, f64)> =
        paths.captures_iter(&loaded.dom).map(|c| (c[1].to_string(), c[2].parse().unwrap())).collect();
    assert_eq!(drawn.len(), 30);
    for (colour, score) in &drawn {
        assert_eq!(colour, if *score < 0.0 { "rgb(178,24,43)" } else { "rgb(33,102,172)" }, "edge of score {score}");
    }
    let cells = Regex::new(
        r#"data-score="([^"]+)"[^>]*><td class="num">\d+</td><td>[^<]*</td><td>[^<]*</td><td class="num (pos|neg)">"#,
    )
    .unwrap();
    let rows: Vec<(f64, String)> =
        cells.captures_iter(&loaded.dom).map(|c| (c[1].parse().unwrap(), c[2].to_string())).collect();
    assert_eq!(rows.len(), 100, "one page of rows");
    assert!(rows.iter().all(|(v, class)| class == if *v < 0.0 { "neg" } else { "pos" }), "score colours");
    assert!(loaded.dom.contains(r#"id="faithfulness""#) && loaded.dom.contains("clean (1)"), "no faithfulness curve");
    screenshot(&browser, &page, 4200);
}

/// The report page of `s` (the IOI model's grids, K = 30, the faithfulness
/// curve) in folder `label`, loaded in the browser with its self-check run.
fn edges_page(browser: &Path, s: &EdgeScores, label: &str) -> (PathBuf, Loaded) {
    use attrpatch::job::{run_job, JobOptions};
    use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};
    let mut o = JobOptions::new(root().join(IOI_MODEL));
    o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    let r = run_job(&o).unwrap().unwrap();
    let report = EdgeReport { scores: s, top_k: 30, faithfulness: &FAITHFULNESS };
    let page = write_report_html_with_edges(&r, &artifact_dir(label), Some(&report)).unwrap();
    let loaded = load(browser, &page);
    loaded.assert_clean();
    (page, loaded)
}

/// The text after `prefix` on its line of the page's self-check.
fn selfcheck_line(check: &str, prefix: &str) -> String {
    let l = check.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no '{prefix}' in:\n{check}"));
    l[prefix.len()..].trim().to_string()
}

/// Under grouped-query attention the key/value readers are `a1.kv0.k`; the
/// report's filter still finds them by the name earlier versions gave them.
#[test]
fn report_filter_reads_the_old_gqa_reader_names() {
    let Some(browser) = chromium() else { return };
    let s = synthetic_edges(Topology { layers: 2, heads: 4, kv_heads: 2, parallel: false }, "gqa page");
    let (_, loaded) = edges_page(&browser, &s, "edges-page-gqa");
    let check = loaded.pre("selfcheck");
    let to_kv0 = s.edges.iter().filter(|e| e.to == "a1.kv0.k").count();
    assert!(to_kv0 > 0 && s.edges.iter().all(|e| !e.to.contains(".h0.k")), "today's names");
    assert_eq!(selfcheck_line(&check, "edges filter a1.kv0.k:"), to_kv0.to_string());
    assert_eq!(selfcheck_line(&check, "edges filter a1.h0.k:"), to_kv0.to_string(), "the old name");
}

/// A tiny grouped-query model with parallel blocks, every edge drawn: key/value
/// readers on their own `a{l}.kv{g}` boxes, each MLP beside its layer's heads.
#[test]
fn grouped_query_parallel_circuit_is_drawn() {
    let t = Topology { layers: 3, heads: 4, kv_heads: 2, parallel: true };
    let s = synthetic_edges(t, "tiny circuit");
    let dir = artifact_dir("circuit-gqa-parallel");
    let written = write_circuit(&dir, &s, s.edges.len()).unwrap();
    let svg = std::fs::read_to_string(&written[1]).unwrap();
    assert_eq!(svg.matches("<polyline").count(), s.edges.len() + 5);
    let texts: Vec<String> = svg_texts(&svg).into_iter().map(|(_, t)| t).collect();
    for l in 0..3 {
        for g in 0..2 {
            assert!(texts.contains(&format!("a{l}.kv{g}")), "no box a{l}.kv{g}: {texts:?}");
        }
        assert!(texts.contains(&format!("a{l}.h3")) && texts.contains(&format!("m{l}")), "layer {l}: {texts:?}");
    }
    let img = image::open(&written[0]).unwrap().to_rgb8();
    assert_eq!((img.width() as i64, img.height() as i64), svg_size(&svg));
}
