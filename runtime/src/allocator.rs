//! The global allocator of nats-api and of every generated worker, and how it gives
//! memory back.

/// mimalloc, which spends less CPU on the per-message allocations than glibc's malloc,
/// and far less than musl's in the static images (`#[global_allocator]` in each binary's
/// `main.rs`). Re-exported so generated crates need no dependency of their own.
pub use mimalloc::MiMalloc as Allocator;

/// mimalloc's option that makes freed memory go back to the system: arenas committed on
/// first use rather than eagerly, since eagerly committed arena memory is never purged.
const OPTIONS: [(&str, &str); 1] = [("MIMALLOC_ARENA_EAGER_COMMIT", "0")];

/// Call first in `main`. mimalloc reads its options from the environment once, when the
/// process starts, before `main`; so, unless it is set already (by the image, or by the
/// operator, whose value wins), the process runs itself again with it, in place
/// (`exec`: the same process id, arguments and environment otherwise). Then it starts the
/// thread that purges freed memory while the process is idle ([`PURGE_INTERVAL`]). After
/// a burst of large request bodies, resident memory returns near idle within seconds
/// (benchmark 7 in docs/benchmarks.md).
pub fn return_freed_memory_promptly() {
    if returns_freed_memory_promptly() {
        start_idle_purger();
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
    start_idle_purger();
}

/// Whether this process runs with the option above (or an operator's value for it).
pub fn returns_freed_memory_promptly() -> bool {
    OPTIONS
        .iter()
        .all(|(name, _)| std::env::var_os(name).is_some())
}

/// How often the idle purger asks mimalloc to purge. mimalloc decommits the memory it
/// has freed once its purge delay (1 s by default, `MIMALLOC_PURGE_DELAY`) has passed, but
/// only when it is called again: a process that sits idle after a burst of large bodies
/// would otherwise keep them resident until its next requests. Purging at once instead
/// (`MIMALLOC_PURGE_DELAY=0`) returns them too, but costs a quarter of nats-api's batch
/// throughput (benchmark 7). A call a second purges only what mimalloc's own next call
/// would, so under load it adds nothing (its throughput cost is not measured yet).
pub const PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn start_idle_purger() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("memory-purge".into())
            .spawn(|| {
                // A thread that has never allocated has no mimalloc heap yet, and
                // `mi_collect` returns at once on one.
                drop(std::hint::black_box(Vec::<u8>::with_capacity(64)));
                loop {
                    std::thread::sleep(PURGE_INTERVAL);
                    purge_freed_memory();
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the memory purge thread; freed memory goes back to the system only under load");
        }
    });
}

/// Decommits what mimalloc freed longer than its purge delay ago, process-wide (its
/// arenas), and what the calling thread's own heap keeps for reuse.
pub fn purge_freed_memory() {
    // SAFETY: `mi_collect` takes no pointer and no lock of ours; mimalloc documents it
    // as callable from any thread at any time (it only visits the caller's heap and the
    // shared arenas, under mimalloc's own synchronisation).
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(false);
    }
}
