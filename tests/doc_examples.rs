//! Every public type, trait and function has an example on its page, or links to a page
//! that has one. The examples themselves are doctests, so they compile and pass.
//!
//! The list of public items is `public-api.txt` (kept equal to rustdoc's output by
//! `.ci/public-api` in CI); each item's documentation is read from its definition.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every `.rs` file of the library (under `src`), with its text.
fn sources() -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // The `mcp-policy` binary is not part of the library's API.
                if !path.ends_with("bin") {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.insert(path.clone(), std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// The `///` lines above the definition `pub <keyword> <name>`, skipping attributes
/// and plain comments; `None` when there is no such definition. Functions are free
/// functions (not indented) unless `method`.
fn item_docs(
    sources: &BTreeMap<PathBuf, String>,
    keyword: &str,
    name: &str,
    method: bool,
) -> Option<String> {
    let needle = format!("pub {keyword} {name}");
    for text in sources.values() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let rest = line.trim_start();
            let Some(after) = rest.strip_prefix(&needle) else {
                continue;
            };
            if keyword.ends_with("fn") && !method && rest.len() != line.len() {
                continue;
            }
            if after.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let mut docs = Vec::new();
            for above in lines[..i].iter().rev() {
                let above = above.trim_start();
                if let Some(doc) = above.strip_prefix("///") {
                    docs.push(doc);
                } else if !(above.starts_with("#[") || above.starts_with("//")) {
                    break;
                }
            }
            docs.reverse();
            return Some(docs.join("\n"));
        }
    }
    None
}

/// The `//!` documentation of module `path` (`crate::layer`).
fn module_docs(path: &str) -> Option<String> {
    let name = path.strip_prefix("crate::")?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let file = [
        src.join(format!("{name}.rs")),
        src.join(name).join("mod.rs"),
    ]
    .into_iter()
    .find(|f| f.exists())?;
    let text = std::fs::read_to_string(file).unwrap();
    let mut docs = Vec::new();
    for line in text.lines() {
        match line.strip_prefix("//!") {
            Some(doc) => docs.push(doc),
            None if docs.is_empty() => continue,
            None => break,
        }
    }
    Some(docs.join("\n"))
}

/// Whether the docs hold a code block rustdoc compiles (not `text` or `ignore`).
fn has_example(docs: &str) -> bool {
    let mut in_block = false;
    for line in docs.lines() {
        let Some(attrs) = line.trim().strip_prefix("```") else {
            continue;
        };
        if in_block {
            in_block = false;
            continue;
        }
        in_block = true;
        let compiled = attrs
            .split(',')
            .map(str::trim)
            .all(|a| !matches!(a, "text" | "ignore" | "json" | "sh" | "console"));
        if compiled {
            return true;
        }
    }
    false
}

/// The documentation an intra-doc link points at: a module, a method, or a type.
fn target_docs(sources: &BTreeMap<PathBuf, String>, target: &str) -> Option<String> {
    if let Some(docs) = module_docs(target) {
        return Some(docs);
    }
    let segments: Vec<&str> = target.split("::").filter(|s| *s != "crate").collect();
    let last = *segments.last()?;
    let is_method = segments.len() >= 2 && last.starts_with(|c: char| c.is_lowercase());
    if is_method {
        return item_docs(sources, "fn", last, true)
            .or_else(|| item_docs(sources, "async fn", last, true));
    }
    ["struct", "enum", "trait", "fn"]
        .into_iter()
        .find_map(|keyword| item_docs(sources, keyword, last, false))
}

/// The targets of the links in a sentence that mentions an example:
/// ``[`Engine::prepare`]``, ``[`layer`](crate::layer)``, `[module docs](crate::layer)`.
fn example_links(docs: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for sentence in docs.split(". ") {
        if !sentence.contains("example") {
            continue;
        }
        let mut rest = sentence;
        while let Some(start) = rest.find('[') {
            let after = &rest[start + 1..];
            let Some(end) = after.find(']') else { break };
            let label = after[..end].trim_matches('`');
            let tail = &after[end + 1..];
            let target = match tail.strip_prefix('(') {
                Some(paren) => paren[..paren.find(')').unwrap_or(paren.len())].to_owned(),
                None => label.to_owned(),
            };
            targets.push(target);
            rest = tail;
        }
    }
    targets
}

#[test]
fn every_public_item_has_an_example_or_links_to_one() {
    let sources = sources();
    let api = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("public-api.txt"))
        .unwrap();
    let mut checked = 0;
    let mut listed = 0;
    let mut missing = Vec::new();
    for item in api.lines().filter(|l| !l.contains("  ")) {
        listed += 1;
        let page = item.rsplit('/').next().unwrap();
        let Some((kind, name)) = page.split_once('.') else {
            continue;
        };
        let keyword = match kind {
            "struct" | "enum" | "trait" | "fn" => kind,
            _ => {
                listed -= 1;
                continue; // constants are documented by their text
            }
        };
        let docs = item_docs(&sources, keyword, name, false)
            .or_else(|| (keyword == "fn").then(|| item_docs(&sources, "async fn", name, false))?)
            .unwrap_or_else(|| panic!("no definition of `pub {keyword} {name}` under src/"));
        checked += 1;
        if has_example(&docs) {
            continue;
        }
        let links = example_links(&docs);
        let linked = links.iter().any(|target| {
            target_docs(&sources, target).is_some_and(|target_docs| has_example(&target_docs))
        });
        if !linked {
            missing.push(format!("{item} (links: {links:?})"));
        }
    }
    assert!(checked > 30, "only {checked} public items were found");
    assert_eq!(checked, listed, "every listed item was found and checked");
    assert!(
        missing.is_empty(),
        "no example, and no link to one, on the pages of:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_checker_sees_a_missing_example() {
    let sources = sources();
    // A private type with plain docs: no code block, no link to an example.
    let docs = item_docs(&sources, "struct", "Segment", false);
    assert!(docs.is_none(), "`Segment` is pub(crate), not `pub struct`");
    assert!(!has_example("A thing.\n\n```text\nnot code\n```"));
    assert!(has_example("A thing.\n\n```\nlet x = 1;\n```"));
    assert_eq!(
        example_links(
            "See the example on [`Policy::explain`]. Also [`Policy`]. An [example](crate::layer)."
        ),
        ["Policy::explain", "crate::layer"]
    );
    assert!(target_docs(&sources, "Policy::explain").is_some_and(|d| has_example(&d)));
    assert!(target_docs(&sources, "crate::layer").is_some_and(|d| has_example(&d)));
}

/// The README's quick start is `examples/quick_start.rs`, which `cargo test` builds: the
/// two never differ.
#[test]
fn the_readme_quick_start_is_the_example_that_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("examples/quick_start.rs")).unwrap();
    let body = &example[example.find("use std::sync::Arc;").unwrap()..];
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```rust,ignore\n{body}```")),
        "the README's quick start differs from examples/quick_start.rs"
    );
}
