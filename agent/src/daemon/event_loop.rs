//! What the loop waits on: every descriptor under a named token, and a
//! timeout that is a pure function of the timers (probes, kill deadlines,
//! terminations, back-offs, the periodic resync), so an idle agent sleeps
//! until the first of them and uses no CPU.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// What a ready descriptor stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// inotify on the pods dir (and its subdirectories).
    PodsDir,
    /// inotify on the containers' state dirs: an `exit.json` arrived.
    Exits,
    /// SIGTERM or SIGINT.
    Signals,
    /// A probe attempt or a start finished on its thread.
    Wake,
    /// A container's shim exited (its pidfd).
    Shim { pod: String, container: String },
}

/// The longest the loop sleeps, whatever the timers say.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// When the loop must wake at the latest: the first timer, or the resync.
pub fn wake_at(timers: impl IntoIterator<Item = Instant>, resync_at: Instant) -> Instant {
    timers.into_iter().fold(resync_at, Instant::min)
}

/// The poll timeout until `until`: at least 1 ms (a timer due now is
/// handled on the next turn, not spun on), at most `MAX_SLEEP`.
pub fn timeout_ms(now: Instant, until: Instant) -> u16 {
    let ms = until
        .saturating_duration_since(now)
        .min(MAX_SLEEP)
        .as_millis();
    u16::try_from(ms).unwrap_or(u16::MAX).max(1)
}

/// Waits until a descriptor is ready or `ms` have passed; the tokens of
/// the ready ones, in the order given. An interrupted wait is an empty
/// turn.
pub fn wait(fds: &[(Token, BorrowedFd<'_>)], ms: u16) -> nix::Result<Vec<Token>> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    match poll(&mut polled, PollTimeout::from(ms)) {
        Ok(_) => {}
        Err(nix::Error::EINTR) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    Ok(polled
        .iter()
        .zip(fds)
        .filter(|(p, _)| p.revents().is_some_and(|r| !r.is_empty()))
        .map(|(_, (t, _))| t.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn the_loop_wakes_for_the_first_timer_or_the_resync() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let resync = t + s(60);
        assert_eq!(wake_at([], resync), resync);
        assert_eq!(wake_at([t + s(5), t + s(2), t + s(9)], resync), t + s(2));
        assert_eq!(wake_at([t + s(90)], resync), resync);
    }

    #[test]
    fn the_timeout_is_bounded_both_ways() {
        let t = Instant::now();
        let table = [
            (Duration::ZERO, 1),
            (Duration::from_micros(300), 1),
            (Duration::from_millis(250), 250),
            (Duration::from_secs(59), 59_000),
            (Duration::from_secs(3600), 60_000),
        ];
        for (d, want) in table {
            assert_eq!(timeout_ms(t, t + d), want, "{d:?}");
        }
        // A timer in the past is due at once.
        assert_eq!(timeout_ms(t + Duration::from_secs(1), t), 1);
    }

    #[test]
    fn a_ready_descriptor_is_reported_under_its_token() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (c, _d) = std::os::unix::net::UnixStream::pair().unwrap();
        (&b).write_all(b"x").unwrap();
        let fds = [(Token::Wake, a.as_fd()), (Token::Exits, c.as_fd())];
        assert_eq!(wait(&fds, 1000).unwrap(), [Token::Wake]);
        let quiet = [(Token::Exits, c.as_fd())];
        assert_eq!(wait(&quiet, 1).unwrap(), []);
    }
}
