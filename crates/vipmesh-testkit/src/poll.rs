//! The one readiness poller: wait (bounded) until something is ready, then go on. A readiness
//! wait, not a timing assertion: the bound only turns a hang into a failure with a reason.

use std::time::{Duration, Instant};

/// How long [`eventually`] sleeps between attempts.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `attempt` until it returns `Ok`, and returns that value; gives up after `timeout`.
///
/// `what` says what is awaited (`"task vote.1 answers on 10.0.0.10:80"`); it and the last
/// error are the panic message when the wait runs out. The first attempt happens at once.
///
/// # Panics
/// When `attempt` has not succeeded within `timeout` (at least one attempt is always made).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// let mut n = 0;
/// let got = vipmesh_testkit::eventually(Duration::from_secs(5), "the third try", || {
///     n += 1;
///     if n < 3 { Err(format!("try {n}")) } else { Ok(n) }
/// });
/// assert_eq!(got, 3);
/// ```
#[track_caller]
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    attempt: impl FnMut() -> Result<T, String>,
) -> T {
    match within(timeout, what, attempt) {
        Ok(v) => v,
        #[allow(clippy::panic)]
        Err(e) => panic!("{e}"),
    }
}

/// [`eventually`] that returns the failure instead of panicking (for demos, which report a
/// failed check and go on cleaning up): `Err` says what was awaited, for how long, and the
/// last error.
///
/// # Errors
/// When `attempt` has not succeeded within `timeout`.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// let e = vipmesh_testkit::within(Duration::ZERO, "a miracle", || -> Result<(), _> {
///     Err("none".to_string())
/// });
/// assert!(e.unwrap_err().contains("a miracle"));
/// ```
pub fn within<T>(
    timeout: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    let mut tries = 0u32;
    loop {
        tries += 1;
        match attempt() {
            Ok(v) => return Ok(v),
            Err(last) if start.elapsed() >= timeout => {
                return Err(format!(
                    "gave up waiting for {what} after {timeout:?} ({tries} attempts); \
                     last error: {last}"
                ));
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "gave up waiting for the impossible")]
    fn names_what_it_waited_for_and_the_last_error() {
        eventually(Duration::ZERO, "the impossible", || -> Result<(), _> {
            Err("still no".to_string())
        });
    }

    #[test]
    fn returns_the_first_success() {
        assert_eq!(eventually(Duration::ZERO, "x", || Ok::<_, String>(7)), 7);
    }
}
