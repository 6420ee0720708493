//! The broker's modules are layers: a module imports only modules of lower layers, so there is
//! no import cycle, and `error` imports no other broker module. Read from the sources as text
//! (every `crate::module` path outside comments), so a new import that breaks the layering
//! fails here with the file that made it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules by layer, highest first; a module may import only those of higher
/// numbers than its own.
const LAYERS: &[(&str, u32)] = &[
    ("runtime", 0),
    ("protocol", 1),
    ("admin", 1),
    ("metrics", 2),
    ("service", 3),
    ("topic", 4),
    ("subscription", 5),
    ("schema", 6),
    ("cluster", 6),
    ("policies", 7),
    ("topic_name", 8),
    ("timefmt", 8),
    ("error", 9),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`None` for `lib.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib").then_some(name)
}

/// Every `crate::name` in the code of `text` (comments left out).
fn imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
            rest = after;
        }
    }
    out
}

#[test]
fn broker_modules_import_only_lower_layers_and_error_is_a_leaf() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut seen_modules = std::collections::BTreeSet::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        seen_modules.insert(module.clone());
        let Some(&own) = layer.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module `{module}` has no layer in LAYERS",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in imports(&text) {
            if used == module {
                continue;
            }
            match layer.get(used.as_str()) {
                Some(&theirs) if theirs > own => {}
                Some(&theirs) => wrong.push(format!(
                    "{}: `{module}` (layer {own}) imports `{used}` (layer {theirs})",
                    file.display()
                )),
                None => wrong.push(format!(
                    "{}: `{module}` imports `{used}`, which has no layer",
                    file.display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // Every layer names a module that exists (a renamed module cannot escape the check).
    for (name, _) in LAYERS {
        assert!(
            seen_modules.contains(*name),
            "LAYERS names `{name}`, which is gone"
        );
    }
}

#[test]
fn the_import_scan_sees_paths_and_skips_comments() {
    let text = "use crate::topic::Topic;\n// crate::runtime in a comment\nlet x = crate::error::BrokerError::NotReady(s); // crate::admin\n";
    assert_eq!(imports(text), vec!["topic".to_owned(), "error".to_owned()]);
}
