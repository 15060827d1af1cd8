//! README.md and the book (`docs/src/*.md`) as tests: their links resolve and their commands run.
//!
//! This is the book's link checker (`.ci/run` builds the book with mdbook, which does not check
//! links): a relative link must name an existing file, a `#anchor` a heading of the target file
//! (GitHub's and mdBook's slugs: lowercase, spaces to '-', other punctuation than '-' and '_'
//! dropped, a repeated heading gets `-1`, `-2`, ...), and every chapter must be in SUMMARY.md.
//! Web links are not fetched (the tests run offline).
//!
//! Commands: every ```` ```sh ```` block is run line by line (a `\` at the end joins the next
//! line, `&&` separates commands, `#` starts a comment); ```` ```sh,no_run ```` marks the blocks a
//! test cannot run (installs, exports, clusters, files not in the repository), and any other
//! shell-like info string is refused so that no block escapes by its spelling. `attrpatch ARGS`
//! and `cargo run [--release] [--features F] -- ARGS` run this build's binary (the dev profile,
//! whatever the line says); `cargo test` is not run (it is this test) and `tools/fetch-ort.sh`
//! is not run (this test run found ONNX Runtime already, and fetching would download). Each block
//! runs in a fresh folder with a `models` link to the repository's, so relative outputs
//! (`attrpatch-out/`, `--out my-run/`) land there, not in the checkout.

use crate::common::{fresh_dir, root};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The commands the README and the book run today are 7; fewer means a block was lost or
/// marked no_run by mistake.
const MIN_COMMANDS_RUN: usize = 7;

fn doc_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("docs/src"))
        .expect("docs/src: the book's chapters")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files.insert(0, root().join("README.md"));
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fenced code block: the line of its opening fence (1-based), its info string, its lines.
struct Block {
    line: usize,
    info: String,
    body: Vec<(usize, String)>,
}

/// Splits a Markdown file into its prose lines (numbered from 1) and its fenced code blocks.
fn split(text: &str) -> (Vec<(usize, &str)>, Vec<Block>) {
    let (mut prose, mut blocks) = (Vec::new(), Vec::new());
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => open = Some(Block { line: i + 1, info: info.trim().to_string(), body: vec![] }),
            (Some(_), Some(_)) => blocks.push(open.take().unwrap()),
            (Some(b), None) => b.body.push((i + 1, line.to_string())),
            (None, None) => prose.push((i + 1, line)),
        }
    }
    assert!(open.is_none(), "a code block is never closed");
    (prose, blocks)
}

/// The line with its `code spans` blanked, so that `[a](b)` written as code is not a link.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    for (i, piece) in line.split('`').enumerate() {
        out.push_str(if i % 2 == 0 { piece } else { " " });
    }
    out
}

/// The targets of the inline links and images `[text](target)` and of the reference
/// definitions `[name]: target` on one line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    if let Some(rest) = line.trim_start().strip_prefix('[') {
        if let Some((_, def)) = rest.split_once("]:") {
            targets.extend(def.split_whitespace().next().map(str::to_string));
        }
    }
    for (at, _) in line.match_indices("](") {
        let rest = &line[at + 2..];
        let end = rest.find([')', ' ']).unwrap_or(rest.len());
        targets.push(rest[..end].to_string());
    }
    targets
}

/// GitHub's and mdBook's anchor of a heading's text.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // A link in a heading counts by its text only.
    while let Some(open) = rest.find('[') {
        text.push_str(&rest[..open]);
        rest = &rest[open + 1..];
        if let Some((label, after)) = rest.split_once("](") {
            text.push_str(label);
            rest = after.split_once(')').map_or("", |(_, a)| a);
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a file's headings give, repeated headings numbered as GitHub does.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    for (_, line) in split(text).0 {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        let Some(heading) = line[hashes..].strip_prefix(' ').filter(|_| (1..=6).contains(&hashes)) else { continue };
        let base = slug(heading.trim_end_matches('#'));
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// Checks the links of one Markdown file (`text`, as if at `path`); returns the number of links
/// checked and a message for each broken one.
fn check_links(path: &Path, text: &str) -> (usize, Vec<String>) {
    let dir = path.parent().unwrap();
    let (mut checked, mut broken) = (0, Vec::new());
    for (n, line) in split(text).0 {
        for target in link_targets(line) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').map_or((target.as_str(), None), |(f, a)| (f, Some(a)));
            let at = format!("{}:{n}: link '{target}'", path.display());
            // `#anchor` alone is a heading of this text (which need not be on disk: see the test below).
            let target_text = if file.is_empty() {
                text.to_string()
            } else {
                let file = dir.join(file);
                if !file.exists() {
                    broken.push(format!("{at}: no file {}", file.display()));
                    continue;
                }
                match anchor {
                    Some(_) if file.extension().is_none_or(|e| e != "md") => {
                        broken.push(format!("{at}: an anchor into a file that is not Markdown"));
                        continue;
                    }
                    Some(_) => read(&file),
                    None => continue,
                }
            };
            let Some(anchor) = anchor else { continue };
            if !anchors(&target_text).contains(anchor) {
                broken.push(format!("{at}: no heading there has the anchor '#{anchor}'"));
            }
        }
    }
    (checked, broken)
}

#[test]
fn links_in_the_readme_and_the_book_resolve() {
    let (mut checked, mut broken) = (0, Vec::new());
    for file in doc_files() {
        let (c, b) = check_links(&file, &read(&file));
        checked += c;
        broken.extend(b);
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    // The README alone links into every chapter: far fewer means the parser stopped finding them.
    assert!(checked >= 40, "only {checked} relative links found in README.md and docs/src");
}

#[test]
fn the_link_checker_finds_a_missing_file_and_a_missing_heading() {
    let at = root().join("docs/src/test.md");
    let text = "[ok](method.md#output) [gone](no-such.md) [no heading](method.md#no-such-heading)\n\
                `[code](is-not-a-link.md)` [here](#a-heading)\n\n## A heading\n";
    let (checked, broken) = check_links(&at, text);
    assert_eq!(checked, 4, "{broken:?}");
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].contains("no file") && broken[0].contains("no-such.md"), "{broken:?}");
    assert!(broken[1].contains("#no-such-heading"), "{broken:?}");
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug("Ground truth: exact patching, and integrated gradients"),
        "ground-truth-exact-patching-and-integrated-gradients"
    );
    assert_eq!(slug("Models of 1-8 billion parameters"), "models-of-1-8-billion-parameters");
    assert_eq!(slug("ONNX Runtime's fused ops"), "onnx-runtimes-fused-ops");
    assert_eq!(slug("`attrpatch_core` and [the book](x.md)"), "attrpatch_core-and-the-book");
    let a = anchors("# Notes\n\n```sh\n# not a heading\n```\n\n## Notes\n");
    assert_eq!(a, HashSet::from(["notes".to_string(), "notes-1".to_string()]));
}

#[test]
fn every_chapter_is_in_the_summary() {
    let summary = read(&root().join("docs/src/SUMMARY.md"));
    let listed: HashSet<String> = split(&summary).0.iter().flat_map(|(_, l)| link_targets(l)).collect();
    let missing: Vec<String> = doc_files()[1..]
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .filter(|name| name != "SUMMARY.md" && !listed.contains(name))
        .collect();
    assert!(missing.is_empty(), "chapters not listed in docs/src/SUMMARY.md: {missing:?}");
    assert!(listed.len() >= 10, "SUMMARY.md lists only {listed:?}");
}

/// A command line's words: whitespace-separated, '...' and "..." quoted, `#` at a word's start
/// ending the line.
fn words(line: &str) -> Vec<String> {
    let (mut out, mut word, mut quote, mut in_word) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => (quote, in_word) = (Some(c), true),
            (None, '#') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unclosed quote in: {line}");
    if in_word {
        out.push(word);
    }
    out
}

/// What a documented command becomes: the binary's arguments, or None for a command this test
/// does not run (with why), or an error for one it cannot.
fn binary_args(cmd: &[String]) -> Result<Option<Vec<String>>, String> {
    let s: Vec<&str> = cmd.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["tools/fetch-ort.sh"] => Ok(None),
        ["cargo", "test", ..] => Ok(None),
        ["attrpatch", args @ ..] => Ok(Some(args.iter().map(|a| a.to_string()).collect())),
        ["cargo", "run", rest @ ..] => {
            let dashes = rest.iter().position(|&a| a == "--").ok_or("`cargo run` without `--`")?;
            let mut flags = rest[..dashes].iter();
            while let Some(&f) = flags.next() {
                let known = match f {
                    "--release" => true,
                    "--features" => flags.next().is_some(),
                    "--bin" => flags.next() == Some(&"attrpatch"),
                    _ => false,
                };
                if !known {
                    return Err(format!("`cargo run` with `{f}` is not the attrpatch binary"));
                }
            }
            Ok(Some(rest[dashes + 1..].iter().map(|a| a.to_string()).collect()))
        }
        _ => Err("not an attrpatch or cargo run command".into()),
    }
}

#[test]
fn binary_args_follow_the_rule() {
    let w = |s: &str| words(s);
    assert_eq!(binary_args(&w("cargo run --release -- run --out x")), Ok(Some(w("run --out x"))));
    assert_eq!(binary_args(&w("attrpatch inspect 'a b.onnx'  # comment")), Ok(Some(w("inspect \"a b.onnx\""))));
    assert_eq!(binary_args(&w("cargo test --features internals")), Ok(None));
    assert!(binary_args(&w("cargo run --example facade -- x")).is_err());
    assert!(binary_args(&w("pip install ./python")).is_err());
}

#[test]
fn sh_blocks_in_the_readme_and_the_book_run() {
    let (mut ran, mut failed, mut refused) = (0, Vec::new(), Vec::new());
    // The folders of failed blocks, kept (their guards drop in the final assert's panic).
    let mut failed_dirs = Vec::new();
    for file in doc_files() {
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        for block in split(&read(&file)).1 {
            let kind = block.info.split([',', ' ']).next().unwrap_or("");
            match block.info.as_str() {
                "sh" => {}
                "sh,no_run" => continue,
                _ if matches!(kind, "sh" | "bash" | "shell" | "console" | "zsh" | "shell-session") => {
                    refused.push(format!("{name}:{}: ```{}: write ```sh or ```sh,no_run", block.line, block.info));
                    continue;
                }
                _ => continue,
            }
            // One folder per block: its lines may read what an earlier line wrote.
            let dir = fresh_dir("docs-sh");
            let failed_before = failed.len();
            std::os::unix::fs::symlink(root().join("models"), dir.join("models")).unwrap();
            let mut joined: Vec<(usize, String)> = Vec::new();
            let mut continues = false;
            for (n, line) in &block.body {
                if continues {
                    joined.last_mut().unwrap().1.push_str(line);
                } else {
                    joined.push((*n, line.clone()));
                }
                continues = line.ends_with('\\');
                if continues {
                    joined.last_mut().unwrap().1.pop();
                }
            }
            for (n, line) in joined {
                let all = words(&line);
                for cmd in all.split(|w| w == "&&").filter(|c| !c.is_empty()) {
                    let at = format!("{name}:{n}: `{}`", cmd.join(" "));
                    let args = match binary_args(cmd) {
                        Ok(Some(args)) => args,
                        Ok(None) => continue,
                        Err(why) => {
                            refused.push(format!("{at}: {why}; mark its block sh,no_run"));
                            continue;
                        }
                    };
                    let start = Instant::now();
                    let o =
                        Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(&args).current_dir(&dir).output().unwrap();
                    eprintln!("{at}: {:.1} s", start.elapsed().as_secs_f64());
                    ran += 1;
                    if !o.status.success() {
                        failed.push(format!(
                            "{at} in {}: {}\n{}{}",
                            dir.display(),
                            o.status,
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        ));
                    }
                }
            }
            if failed.len() > failed_before {
                failed_dirs.push(dir);
            }
        }
    }
    assert!(refused.is_empty(), "commands this test cannot run:\n{}", refused.join("\n"));
    assert!(failed.is_empty(), "documented commands that failed:\n{}", failed.join("\n\n"));
    assert!(ran >= MIN_COMMANDS_RUN, "ran {ran} documented commands, expected at least {MIN_COMMANDS_RUN}");
}

/// The book's CLI reference is what the clap definitions print: it cannot drift from the flags.
#[test]
fn the_cli_reference_is_the_binarys() {
    let out = Command::new(env!("CARGO_BIN_EXE_attrpatch")).arg("--markdown-help").output().unwrap();
    assert!(out.status.success(), "attrpatch --markdown-help: {}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8(out.stdout).unwrap();
    assert!(generated.contains("## `attrpatch run`") && generated.contains("--hook"), "{generated}");
    let page = read(&root().join("docs/src/cli.md"));
    assert!(
        page == generated,
        "docs/src/cli.md is not what the CLI prints: regenerate it with \
         `cargo run -- --markdown-help > docs/src/cli.md`"
    );
}
