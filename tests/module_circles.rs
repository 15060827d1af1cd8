//! No circle between the source files of a crate. Cargo forbids a circle
//! between the crates (`attrpatch-onnx` -> ... -> `attrpatch`); inside one,
//! this test does: file A importing B (`crate::` or `super::` paths) while B,
//! by any chain, imports A. A module's own `mod.rs` (or `lib.rs`) naming its
//! children is declaration, not an import, and is left out; test modules are too.

use crate::common::root;
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The source roots of the workspace's crates.
const CRATES: &[&str] =
    &["crates/onnx/src", "crates/autodiff/src", "crates/core/src", "crates/render/src", "src", "python/src"];

/// File (relative to its crate's source root) -> the files of the crate it imports.
type Imports = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `a/b.rs` and `a/b/mod.rs` are `a::b`.
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.trim_end_matches(".rs").split('/').map(String::from).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// Whether `rel` declares the modules of its folder (`mod.rs`, `lib.rs`, `main.rs`).
fn declares_children(rel: &str) -> bool {
    rel.ends_with("mod.rs") || rel == "lib.rs" || rel == "main.rs"
}

/// The file that defines the longest prefix of module path `parts`.
fn file_of(src: &Path, parts: &[String]) -> Option<String> {
    (1..=parts.len()).rev().find_map(|n| {
        let p = parts[..n].iter().fold(src.to_path_buf(), |p, s| p.join(s));
        [p.with_extension("rs"), p.join("mod.rs")]
            .into_iter()
            .find(|c| c.is_file())
            .map(|c| c.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/"))
    })
}

/// The imports between the files of the crate whose sources are in `src`.
fn imports(src: &Path) -> Imports {
    let braces = Regex::new(r"\b((?:crate|super)(?:::\w+)*)::\{([^{}]*)\}").unwrap();
    let path = Regex::new(r"\b(crate|super)((?:::\w+)+)").unwrap();
    let mut files = vec![];
    rust_files(src, &mut files);
    let mut out = Imports::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        // Comments name paths too (`crate::x` in a doc line); only code counts.
        let code: String = code.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
        let code = braces.replace_all(&code, |c: &regex::Captures| {
            c[2].split(',')
                .map(|i| i.trim())
                .filter(|i| !i.is_empty())
                .map(|i| format!("{}::{i} ", &c[1]))
                .collect::<String>()
        });
        let me = module_of(&rel);
        let targets = out.entry(rel.clone()).or_default();
        for c in path.captures_iter(&code) {
            let mut segs: Vec<String> = c[2].split("::").skip(1).map(String::from).collect();
            let mut base = if &c[1] == "crate" { vec![] } else { me[..me.len().saturating_sub(1)].to_vec() };
            while segs.first().is_some_and(|s| s == "super") {
                segs.remove(0);
                base.pop();
            }
            base.extend(segs);
            let Some(t) = file_of(src, &base) else { continue };
            let child = declares_children(&rel) && {
                let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);
                dir.is_empty() || t.starts_with(&format!("{dir}/"))
            };
            if t != rel && !child {
                targets.insert(t);
            }
        }
    }
    out
}

/// The circles: strongly connected sets of more than one file, each sorted.
fn circles(g: &Imports) -> Vec<Vec<String>> {
    // Tarjan's algorithm.
    struct State<'a> {
        g: &'a Imports,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                s.low.insert(v, s.low[v].min(lw));
            } else if s.on.contains(w) {
                let iw = s.index[w];
                s.low.insert(v, s.low[v].min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut c = vec![];
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                c.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if c.len() > 1 {
                c.sort();
                s.out.push(c);
            }
        }
    }
    let mut s =
        State { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], on: BTreeSet::new(), out: vec![] };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_crate_has_a_circle_between_its_files() {
    for c in CRATES {
        let found = circles(&imports(&root().join(c)));
        assert!(found.is_empty(), "{c}: files that import each other, by some chain: {found:?}");
    }
}

/// The check finds a circle (through `super::` and a brace list), and does
/// not count a `mod.rs` naming its own children.
#[test]
fn the_circle_check_finds_a_circle() {
    let dir = crate::common::fresh_dir("circles");
    let write = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\n");
    write("a/mod.rs", "pub mod x;\npub use x::X;\n");
    write("a/x.rs", "use crate::b::{Y, Z};\npub struct X;\n");
    write("b.rs", "// crate::a::X in a comment is no import\npub struct Y;\npub struct Z;\n");
    assert_eq!(circles(&imports(&dir)), Vec::<Vec<String>>::new());
    write("b.rs", "use super::a::x::X;\npub struct Y;\npub struct Z;\n");
    assert_eq!(circles(&imports(&dir)), vec![vec!["a/x.rs".to_string(), "b.rs".to_string()]]);
}
