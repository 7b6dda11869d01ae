//! How the kernel schedules the process's threads (`FLOTILLA_SCHED_POLICY`).
//!
//! A request crosses several threads here: the runtime's workers, each SQLite database's
//! worker (sqlx's), the embedded bus's writer. Under Linux's default policy
//! (`SCHED_OTHER`) a thread that wakes may preempt the one running on its CPU at once:
//! under load a runtime worker was preempted mid-batch about 4,000 times a second by
//! the database threads it had just handed work to, and every preemption is two context
//! switches that do nothing for the request. `SCHED_BATCH` — the kernel's policy for
//! threads that want throughput, not wake-up latency — lets a woken thread wait for the
//! running one to block or use up its slice instead; the CPU shares and nice values stay
//! as they were. On an idle CPU a woken thread runs at once under either policy, so a
//! lone request waits no longer. Measured (BENCHMARKS.md, "Fewer preemptions"): five in
//! six preemptions gone, about 5 % less CPU per created post.
//!
//! Since a write's commit is answered by the sync of its database's log on a thread of
//! its own (`crates/storage/src/group.rs`), that thread's wake-up decides how soon the
//! write is answered, and `SCHED_BATCH` delays it: measured again (BENCHMARKS.md, "The
//! sync beside the next batch"), the kernel's default made more creates a second in
//! every one of nine alternating pairs (+1 to +5 %) for 2–4 µs more CPU each. So
//! `SCHED_OTHER` is the default again, and `batch` is there for a host where the
//! switches cost more than the wake-ups.
//!
//! Set before the first thread is spawned, the policy is inherited by every thread the
//! process starts (the runtime's, sqlx's, the bus's). Needs no privilege.

/// The scheduling policy for the process's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Policy {
    /// `SCHED_BATCH`: a thread that wakes does not preempt the running one.
    Batch,
    /// `SCHED_OTHER`: the kernel's default.
    #[default]
    Other,
}

/// Puts the calling thread — and so every thread it spawns from now on — under
/// `policy`, keeping its nice value. `Err` says why not (the process runs on as it was).
pub fn apply(policy: Policy) -> Result<(), String> {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    };
    let normal = match policy {
        Policy::Batch => NormalThreadSchedulePolicy::Batch,
        Policy::Other => NormalThreadSchedulePolicy::Other,
    };
    let nice = rustix::process::getpriority_process(None)
        .map_err(|error| format!("cannot read the nice value: {error}"))?;
    // The crate sets a normal policy's nice value with it, from a 0–99 scale on which
    // 48 is nice 0; the process's own nice value is put back below.
    let neutral = ThreadPriorityValue::try_from(48u8)
        .map_err(|error| format!("no neutral priority: {error}"))?;
    thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Crossplatform(neutral),
        ThreadSchedulePolicy::Normal(normal),
    )
    .map_err(|error| format!("cannot set the scheduling policy: {error:?}"))?;
    if rustix::process::getpriority_process(None).ok() != Some(nice) {
        rustix::process::setpriority_process(None, nice)
            .map_err(|error| format!("cannot restore the nice value {nice}: {error}"))?;
    }
    Ok(())
}

/// The calling thread's policy.
pub fn current() -> Option<Policy> {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
    match thread_priority::thread_schedule_policy().ok()? {
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch) => Some(Policy::Batch),
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other) => Some(Policy::Other),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case on a thread of its own: the policy is the calling thread's.
    fn on_a_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("the thread ran")
    }

    #[test]
    fn batch_is_set_inherited_by_new_threads_and_keeps_the_nice_value() {
        on_a_thread(|| {
            // A raised nice value (allowed without privilege) must survive the change.
            rustix::process::setpriority_process(None, 3).expect("nice 3");
            apply(Policy::Batch).expect("SCHED_BATCH needs no privilege");
            assert_eq!(current(), Some(Policy::Batch));
            assert_eq!(rustix::process::getpriority_process(None).ok(), Some(3));
            let child =
                std::thread::spawn(|| (current(), rustix::process::getpriority_process(None).ok()))
                    .join()
                    .expect("the child ran");
            assert_eq!(child, (Some(Policy::Batch), Some(3)));
        });
    }

    #[test]
    fn other_puts_the_default_back() {
        on_a_thread(|| {
            let nice = rustix::process::getpriority_process(None).ok();
            apply(Policy::Batch).expect("batch");
            apply(Policy::Other).expect("other");
            assert_eq!(current(), Some(Policy::Other));
            assert_eq!(rustix::process::getpriority_process(None).ok(), nice);
        });
    }
}
