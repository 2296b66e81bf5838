//! Writes the OpenAPI document the code describes to `src/openapi.json` (or prints it with
//! `--stdout`). `cargo test` fails while the committed file differs from this output.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    let text = poptill::openapi::document_text();
    if std::env::args().any(|a| a == "--stdout") {
        print!("{text}");
        return std::process::ExitCode::SUCCESS;
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/openapi.json");
    match std::fs::write(path, text) {
        Ok(()) => {
            eprintln!("wrote {path}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("could not write {path}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
