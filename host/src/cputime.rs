//! CPU time, as the kernel counts it per thread: what an upload's
//! validation, compile or model load is billed. A leaf module: anything may
//! use it.

use std::time::Duration;

/// The CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_s_cpu_time_grows_with_its_work_not_its_sleep() {
        let before = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time().saturating_sub(before);
        assert!(slept < Duration::from_millis(20), "slept {slept:?}");
        // Spinning adds CPU time, however busy the machine is.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while thread_cpu_time().saturating_sub(before) < Duration::from_millis(30) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no CPU time counted"
            );
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
}
