//! The one way a test waits: poll something observable until it holds.

use std::time::Duration;

/// How long a condition may take by default before a test fails: generous, as the shared
/// 2-core test machines stall now and then.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What a condition of [`eventually`] answers: `true`, `Some(value)` or `Ok(value)` once it
/// holds; an `Err` says what it saw instead, for the failure message.
pub trait Outcome {
    type Output;
    fn done(self) -> Result<Self::Output, Option<String>>;
}

impl Outcome for bool {
    type Output = ();
    fn done(self) -> Result<(), Option<String>> {
        self.then_some(()).ok_or(None)
    }
}

impl<T> Outcome for Option<T> {
    type Output = T;
    fn done(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: std::fmt::Display> Outcome for Result<T, E> {
    type Output = T;
    fn done(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// Polls `condition` until it holds (returns `true`, `Some` or `Ok`), and returns what it
/// gave; fails the test once `timeout` has passed, naming `what` was waited for and, if the
/// condition said, what it saw last.
pub async fn eventually<R: Outcome>(
    what: &str,
    timeout: Duration,
    mut condition: impl AsyncFnMut() -> R,
) -> R::Output {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = match condition().await.done() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            match seen {
                Some(seen) => panic!("timed out after {timeout:?} waiting for {what}; last {seen}"),
                None => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_what_the_condition_gave_once_it_holds() {
        let mut polls = 0;
        let value = eventually("the third poll", PATIENCE, async || {
            polls += 1;
            (polls == 3).then_some(polls)
        })
        .await;
        assert_eq!(value, 3);
        eventually("a bool", PATIENCE, async || true).await;
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for an answer; last 503")]
    async fn fails_with_what_the_condition_saw_last() {
        eventually("an answer", Duration::from_millis(100), async || {
            Err::<(), _>(503)
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the impossible")]
    async fn fails_naming_what_was_waited_for() {
        eventually("the impossible", Duration::from_millis(100), async || false).await;
    }
}
