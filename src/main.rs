//! The `strongroom` binary: see `strongroom --help` and docs/operations.md.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    strongroom::cli::run()
}
