//! The generated TPC-H worker's `main`, as a binary of this crate so its tests can run
//! (and kill) it as a process: the generated `main.rs` is this same one line.

fn main() -> std::process::ExitCode {
    nomnom_runtime::worker::main(tpch_worker::Schema)
}
