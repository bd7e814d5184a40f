//! The architecture's rules, checked on the source tree (docs/architecture.md says why
//! each holds):
//! - data flows one way: a module of the compiler library imports only the modules its
//!   row of `MAY_IMPORT` names (no pass imports a later pass or calls back into an
//!   earlier one);
//! - no source file under compiler/ or runtime/ is over `MAX_LINES` lines, test modules
//!   and test files apart;
//! - the runtime never depends on the compiler.
//!
//! Only code outside `#[cfg(test)]` counts: a unit test may build its input with any pass.

use std::fs;
use std::path::{Path, PathBuf};

/// Every top-level module of the compiler library (compiler/lib.rs) and the modules its
/// code outside tests may import (`crate::NAME`).
const MAY_IMPORT: &[(&str, &[&str])] = &[
    // Leaves: the instruction set and UAPI constants; the field registry; diagnostics.
    ("bpf", &[]),
    ("fields", &["bpf"]),
    ("diag", &["syntax"]),
    // The passes, in the order data flows.
    ("syntax", &["diag", "fields"]),
    ("hir", &["syntax", "fields"]),
    ("check", &["syntax", "hir", "diag", "fields"]),
    ("lower", &["hir", "bpf", "fields"]),
    ("object", &["bpf"]),
    // The pipeline and its listing.
    (
        "compile",
        &["syntax", "check", "hir", "lower", "bpf", "object", "diag"],
    ),
    // Consumers of the compiled policy. The evaluator shares no code with `lower`.
    ("eval", &["hir", "fields", "syntax"]),
    ("vm", &["bpf", "hir", "lower"]),
    ("cases", &["compile", "hir", "eval", "vm"]),
    // The glue the command line calls: compile and show the diagnostics.
    ("report", &["check", "compile", "diag", "hir", "lower"]),
];

const MAX_LINES: usize = 900;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The file's text before its `#[cfg(test)]` module (by convention the last item), or
/// nothing for a file that is a test module itself (`tests.rs`).
fn non_test_code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The attribute of the test module, not of a test-only `use` or item before it.
    let module = text.match_indices("\n#[cfg(test)]\n").find(|(at, attr)| {
        let next = text[at + attr.len()..].lines().next().unwrap_or("");
        next.starts_with("mod ") || next.contains(" mod tests")
    });
    match module {
        Some((at, _)) => text[..at].to_string(),
        None => text,
    }
}

/// The top-level module a file under compiler/ belongs to (`compiler/lower/lir.rs` ->
/// `lower`, `compiler/compile.rs` -> `compile`), or None for the crate root.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root().join("compiler")).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    if rel.components().count() == 1 {
        let stem = first.strip_suffix(".rs")?;
        (stem != "lib").then(|| stem.to_string())
    } else {
        Some(first.to_string())
    }
}

/// The `crate::NAME` paths in `code`, comments left out.
fn crate_imports(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn every_module_imports_only_what_its_row_allows() {
    let mut files = Vec::new();
    rust_files(&root().join("compiler"), &mut files);
    let mut broken = Vec::new();
    let mut seen_modules = Vec::new();
    for f in &files {
        let Some(module) = module_of(f) else { continue };
        if !root().join("compiler").join(&module).is_dir()
            && !root()
                .join("compiler")
                .join(format!("{module}.rs"))
                .is_file()
        {
            continue;
        }
        // A package of its own under compiler/ (the CLI) is not part of the library.
        if root()
            .join("compiler")
            .join(&module)
            .join("Cargo.toml")
            .is_file()
        {
            continue;
        }
        let Some((_, allowed)) = MAY_IMPORT.iter().find(|(m, _)| *m == module) else {
            broken.push(format!(
                "{}: module `{module}` has no row in MAY_IMPORT (add one, and a paragraph in docs/architecture.md)",
                f.display()
            ));
            continue;
        };
        seen_modules.push(module.clone());
        for import in crate_imports(&non_test_code(f)) {
            if import != module && !allowed.contains(&import.as_str()) {
                broken.push(format!(
                    "{}: `{module}` imports `crate::{import}`",
                    f.display()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
    for (m, _) in MAY_IMPORT {
        assert!(
            seen_modules.iter().any(|s| s == m),
            "MAY_IMPORT names `{m}`, which is no module of compiler/"
        );
    }
}

#[test]
fn no_source_file_is_over_the_line_limit() {
    let mut files = Vec::new();
    rust_files(&root().join("compiler"), &mut files);
    rust_files(&root().join("runtime"), &mut files);
    let long: Vec<String> = files
        .iter()
        .map(|f| (f, non_test_code(f).lines().count()))
        .filter(|(_, n)| *n > MAX_LINES)
        .map(|(f, n)| format!("{}: {n} lines", f.display()))
        .collect();
    assert!(
        long.is_empty(),
        "split these along their jobs (tests apart, at most {MAX_LINES} lines):\n{}",
        long.join("\n")
    );
}

/// The names of the `[dependencies]` of a manifest (not dev- or build-dependencies).
fn normal_dependencies(manifest: &str) -> Vec<String> {
    let text =
        fs::read_to_string(root().join(manifest)).unwrap_or_else(|e| panic!("{manifest}: {e}"));
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
        } else if in_deps && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

#[test]
fn the_runtime_does_not_depend_on_the_compiler() {
    for manifest in ["runtime/Cargo.toml", "runtime/abi/Cargo.toml"] {
        let deps = normal_dependencies(manifest);
        assert!(
            !deps.iter().any(|d| d == "skpc"),
            "{manifest} depends on the compiler: {deps:?}"
        );
    }
    let mut files = Vec::new();
    rust_files(&root().join("runtime"), &mut files);
    for f in files {
        let code = non_test_code(&f);
        assert!(
            !code.contains("skpc::"),
            "{} uses the compiler",
            f.display()
        );
    }
}

#[test]
fn the_compiler_library_does_not_depend_on_aya() {
    // `cargo tree -p skpc -e normal` lists no aya: the library's own dependencies name
    // neither aya nor the runtime (which brings it); the CLI package links them.
    let deps = normal_dependencies("Cargo.toml");
    assert!(
        deps.iter().any(|d| d == "logos"),
        "no [dependencies] found: {deps:?}"
    );
    for banned in ["aya", "aya-obj", "skpc-runtime"] {
        assert!(
            !deps.iter().any(|d| d == banned),
            "the compiler library depends on {banned}"
        );
    }
}

#[test]
fn every_test_file_is_listed_in_a_manifest() {
    // Both packages set `autotests = false` (the binary's tests belong to compiler/cli),
    // so a file in tests/ that no `[[test]]` names would silently never run.
    let manifests = [
        fs::read_to_string(root().join("Cargo.toml")).unwrap_or_default(),
        fs::read_to_string(root().join("compiler/cli/Cargo.toml")).unwrap_or_default(),
    ];
    let entries = fs::read_dir(root().join("tests")).expect("tests/ is readable");
    let mut missing = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".rs") {
            continue;
        }
        let listed = manifests
            .iter()
            .any(|m| m.contains(&format!("tests/{name}\"")));
        if !listed {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "add a [[test]] for each to Cargo.toml (or compiler/cli/Cargo.toml if it runs the binary): {missing:?}"
    );
}
