//! The `strongroom` binary: see `strongroom --help` and docs/operations.md.
#![forbid(unsafe_code)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    strongroom::cli::run()
}
