//! Background work at the lowest CPU priority: the self-audit's windows
//! (`app::self_audit`) and the bit sets of dense terms (`search::dense`).

/// Puts the calling thread in `SCHED_IDLE`, at nice 19: the policy
/// meant for work that runs only on a core nothing else wants. Linux
/// keeps both per thread (`0`: the calling one), and lowering either
/// needs no privilege. `what` names the work in a warning. (`perf sched`
/// on this VM, 2026-12-05: at nice 19 alone the self-audit's threads ran
/// slices of 4 to 14 ms while normal threads waited; `SCHED_IDLE` did not
/// measurably shorten those waits. What took the search p99 back under
/// 5 ms was one thread instead of two.)
pub fn lower_this_threads_priority(what: &str) {
    let idle = libc::sched_param { sched_priority: 0 };
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "a thread of {what} is not in SCHED_IDLE");
    }
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "a thread of {what} runs at normal priority");
    }
}
