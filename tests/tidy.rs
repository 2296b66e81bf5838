//! Project conventions checked as an ordinary test: every Rust file says what it is for.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_doc_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "examples", "wasm-tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {} Rust files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !fs::read_to_string(f).unwrap_or_default().starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! line: {missing:?}"
    );
}

fn edge_files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/edge"), &mut files);
    assert!(files.len() > 10, "found only {} shell files", files.len());
    files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(root).unwrap_or(f).display().to_string();
            (rel, fs::read_to_string(f).unwrap_or_default())
        })
        .collect()
}

#[test]
fn shell_files_stay_small_and_take_few_arguments() {
    let mut too_long = Vec::new();
    for (path, text) in edge_files() {
        let lines = text.lines().count();
        if lines > 500 {
            too_long.push(format!("{path}: {lines} lines"));
        }
    }
    assert!(
        too_long.is_empty(),
        "shell files over 500 lines: {too_long:?}"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    rust_files(&root.join("src"), &mut all);
    let allowed: Vec<String> = all
        .iter()
        .filter(|f| {
            fs::read_to_string(f)
                .unwrap_or_default()
                .contains(&format!("allow(clippy::{})", "too_many_arguments"))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        allowed.is_empty(),
        "too_many_arguments allowed in {allowed:?}"
    );
}

#[test]
fn event_objects_have_one_client() {
    // Only `edge/object_client.rs` opens the EVENTS namespace or fetches a stub, and the
    // routes reach it without going through each other (no events <-> telemetry circle).
    let mut callers = Vec::new();
    let mut circles = Vec::new();
    for (path, text) in edge_files() {
        let client = path.ends_with("edge/object_client.rs");
        if !client
            && (text.contains("durable_object(\"EVENTS\")") || text.contains("fetch_with_request"))
        {
            callers.push(path.clone());
        }
        let telemetry = path.ends_with("edge/telemetry.rs");
        let events = path.contains("edge/events/");
        if (telemetry && text.contains("events::")) || (events && text.contains("telemetry::")) {
            circles.push(path);
        }
    }
    assert!(
        callers.is_empty(),
        "event objects called outside object_client: {callers:?}"
    );
    assert!(
        circles.is_empty(),
        "events and telemetry import each other: {circles:?}"
    );
}
