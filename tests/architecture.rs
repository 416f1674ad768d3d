//! The layering of docs/ARCHITECTURE.md holds in the code: no module of the library imports a
//! module above it, `src/lib.rs` declares the modules in the documented order, and the checker
//! itself catches a violation.
mod common;

use std::collections::BTreeMap;
use std::path::Path;

/// The module order of the `layers` block in docs/ARCHITECTURE.md, bottom first.
fn documented_layers() -> Vec<String> {
    let doc = std::fs::read_to_string(common::root().join("docs/ARCHITECTURE.md")).unwrap();
    let start = doc.find("```layers\n").expect("a ```layers block") + "```layers\n".len();
    let end = start
        + doc[start..]
            .find("```")
            .expect("the end of the layers block");
    doc[start..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Source text without comments (doc comments may name modules they do not import).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a file refers to through `crate::…`, including `use crate::{a, b::c}`
/// groups. `crate::Error` and `crate::Result` are the `error` module's re-exports.
fn imports(text: &str) -> Vec<String> {
    let text = code(text);
    let mut out = vec![];
    let mut rest = text.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(k, _)| k)
                .unwrap_or(group.len());
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain([',']) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(item.trim().split("::").next().unwrap_or("").to_string());
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out.into_iter()
        .filter(|n| !n.is_empty())
        .map(|n| match n.as_str() {
            "Error" | "Result" => "error".to_string(),
            _ => n,
        })
        .collect()
}

/// Every `(module, file, imported module)` that points up the documented order.
fn violations(layers: &[String], files: &BTreeMap<String, String>) -> Vec<String> {
    let rank = |m: &str| layers.iter().position(|l| l == m);
    let mut out = vec![];
    for (file, text) in files {
        let module = file.split(['/', '.']).next().unwrap_or("");
        let Some(own) = rank(module) else {
            out.push(format!(
                "{file}: module `{module}` is not in docs/ARCHITECTURE.md"
            ));
            continue;
        };
        for m in imports(text) {
            match rank(&m) {
                Some(r) if r <= own || m == module => {}
                Some(_) => out.push(format!(
                    "{file}: `{module}` imports `{m}`, which is above it"
                )),
                None => out.push(format!(
                    "{file}: imports `crate::{m}`, not a documented module"
                )),
            }
        }
    }
    out
}

/// The library's source files (everything under src/ but the binary and lib.rs), by path
/// relative to src/.
fn library_files() -> BTreeMap<String, String> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if rel != "bin" {
                    walk(&p, base, out);
                }
            } else if rel.ends_with(".rs") && rel != "lib.rs" {
                out.insert(rel, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let src = common::root().join("src");
    let mut out = BTreeMap::new();
    walk(&src, &src, &mut out);
    out
}

#[test]
fn no_module_imports_a_module_above_it() {
    let layers = documented_layers();
    let files = library_files();
    assert!(files.len() > 20, "read {} files", files.len());
    let v = violations(&layers, &files);
    assert!(v.is_empty(), "layering violations:\n{}", v.join("\n"));
}

#[test]
fn lib_rs_declares_the_modules_in_the_documented_order() {
    let lib = std::fs::read_to_string(common::root().join("src/lib.rs")).unwrap();
    let declared: Vec<String> = code(&lib)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    assert_eq!(declared, documented_layers());
}

#[test]
fn the_checker_catches_an_upward_import() {
    let layers = documented_layers();
    let files = |path: &str, text: &str| BTreeMap::from([(path.to_string(), text.to_string())]);
    // nn may not use train, even inside a group import or a path in an expression
    for text in [
        "use crate::train::optim::Adam;",
        "use crate::{schedule::Schedule, train::Run};",
        "let b = crate::train::step_seed(0, 1);",
    ] {
        let v = violations(&layers, &files("nn/unet.rs", text));
        assert_eq!(v.len(), 1, "{text}: {v:?}");
        assert!(v[0].contains("`nn` imports `train`"), "{v:?}");
    }
    // downward imports, the error re-exports and comments are fine
    let ok = "use crate::{Error, Result};\nuse crate::schedule::Schedule; // crate::train\n/// [`crate::eval`]";
    assert!(violations(&layers, &files("nn/unet.rs", ok)).is_empty());
    // an undocumented module is reported
    assert_eq!(violations(&layers, &files("extra.rs", "")).len(), 1);
}

#[test]
fn the_binary_s_functions_are_short() {
    // subcommand handlers parse, call the library and print: about 40 lines at most
    let dir = common::root().join("src/bin/dsno");
    let mut long = vec![];
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let is_fn = l.starts_with("fn ") || l.starts_with("pub fn ");
            if let (true, Some(len)) = (is_fn, lines[i..].iter().position(|l| *l == "}")) {
                if len + 1 > 42 {
                    long.push(format!("{}:{}: {} lines", p.display(), i + 1, len + 1));
                }
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over 42 lines:\n{}",
        long.join("\n")
    );
}
