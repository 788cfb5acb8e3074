//! The generated TPC-H worker's `main`, as a binary of this crate so its tests can run
//! (and kill) it as a process: the same lines as the generated `main.rs`.

#[global_allocator]
static ALLOCATOR: nomnom_runtime::Allocator = nomnom_runtime::Allocator;

fn main() -> std::process::ExitCode {
    nomnom_runtime::worker::main(tpch_worker::Schema)
}
