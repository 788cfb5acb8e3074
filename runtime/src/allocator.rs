//! The global allocator of nats-api and of every generated worker, and how it gives
//! memory back.

/// mimalloc, which spends less CPU on the per-message allocations than glibc's malloc,
/// and far less than musl's in the static images (`#[global_allocator]` in each binary's
/// `main.rs`). Re-exported so generated crates need no dependency of their own.
pub use mimalloc::MiMalloc as Allocator;

/// mimalloc's option that makes freed memory go back to the system: arenas committed on
/// first use rather than eagerly, since eagerly committed arena memory is never purged.
/// Purging at once as well (`MIMALLOC_PURGE_DELAY=0`) would return the memory of large
/// freed bodies even to a process that then sits idle (mimalloc runs delayed purges only
/// while it allocates), but cost a quarter of nats-api's batch throughput (benchmark 7 in
/// docs/benchmarks.md), so it is left to the operator.
const OPTIONS: [(&str, &str); 1] = [("MIMALLOC_ARENA_EAGER_COMMIT", "0")];

/// Call first in `main`. mimalloc reads its options from the environment once, when the
/// process starts, before `main`; so, unless it is set already (by the image, or by the
/// operator, whose value wins), the process runs itself again with it, in place
/// (`exec`: the same process id, arguments and environment otherwise). After a burst of
/// large request bodies, resident memory then returns near idle within seconds
/// (benchmark 7 in docs/benchmarks.md).
pub fn return_freed_memory_promptly() {
    if returns_freed_memory_promptly() {
        return;
    }
    #[cfg(unix)]
    if let Ok(exe) = std::env::current_exe() {
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        for (name, value) in OPTIONS {
            if std::env::var_os(name).is_none() {
                command.env(name, value);
            }
        }
        // Returns only if the process could not be replaced: then it runs on as it is.
        let _ = command.args(args).exec();
    }
}

/// Whether this process runs with the option above (or an operator's value for it).
pub fn returns_freed_memory_promptly() -> bool {
    OPTIONS
        .iter()
        .all(|(name, _)| std::env::var_os(name).is_some())
}
