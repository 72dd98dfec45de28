//! The replica set and its bookkeeping, without I/O: which replica takes the next request
//! (least outstanding requests, ties in turn), and which are ejected after failing in a row.
//! Every decision takes the time as an argument, so the tests drive the clock.

use std::time::{Duration, Instant};

/// When a replica is set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionPolicy {
    /// Consecutive failures that eject a replica.
    pub failures: u32,
    /// The first ejection's length; each further one (without a success between) doubles it.
    pub base: Duration,
    /// The longest ejection.
    pub max: Duration,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        EjectionPolicy {
            failures: 3,
            base: Duration::from_secs(10),
            max: Duration::from_secs(160),
        }
    }
}

/// How one attempt on a replica ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer (any status but a server error): the replica works.
    Success,
    /// No answer, a timeout, or a server error: counts towards ejection.
    Failure,
    /// A 503 with `Retry-After`: the replica is up but asks for time (starting, catching
    /// up). Worth another replica, but no sign of a broken one.
    Busy,
    /// The request was dropped before an answer (its client went away): says nothing.
    Abandoned,
}

/// One replica as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub url: String,
    /// Requests sent to it whose answer has not arrived yet.
    pub in_flight: usize,
    pub consecutive_failures: u32,
    /// Set aside until then.
    pub ejected_until: Option<Instant>,
    /// Ejections since its last success: the next one lasts `base * 2^ejections`.
    pub ejections: u32,
}

impl Replica {
    fn new(url: String) -> Self {
        Replica {
            url,
            in_flight: 0,
            consecutive_failures: 0,
            ejected_until: None,
            ejections: 0,
        }
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

/// What [`Balancer::finish`] did besides counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// The replica was ejected for this long.
    Ejected(Duration),
}

#[derive(Debug, Clone)]
pub struct Balancer {
    replicas: Vec<Replica>,
    policy: EjectionPolicy,
    /// Where the round-robin among equally loaded replicas goes on.
    cursor: usize,
}

impl Balancer {
    pub fn new(urls: &[String], policy: EjectionPolicy) -> Self {
        let mut balancer = Balancer {
            replicas: Vec::new(),
            policy,
            cursor: 0,
        };
        balancer.set_replicas(urls);
        balancer
    }

    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// Makes `urls` the replica set: new ones join with a clean slate, known ones keep
    /// their counts and ejections, the others are dropped (their requests in flight end
    /// without being counted). Returns whether the set changed.
    pub fn set_replicas(&mut self, urls: &[String]) -> bool {
        let mut changed = false;
        let before = self.replicas.len();
        self.replicas.retain(|r| urls.contains(&r.url));
        changed |= self.replicas.len() != before;
        for url in urls {
            if !self.replicas.iter().any(|r| &r.url == url) {
                self.replicas.push(Replica::new(url.clone()));
                changed = true;
            }
        }
        changed
    }

    /// Picks the replica for a request and counts it in flight. Replicas not ejected come
    /// first, then the ones ejected (should every one be), and `avoid` (the one a retry
    /// leaves) only when there is no other. Among those, a request with an `affinity` (a
    /// live feed's query) goes to the same replica every time the set allows (rendezvous
    /// hashing): a feed's event ids are its replica's, so a reconnection that lands there
    /// resumes with `Last-Event-ID` instead of starting over from a snapshot. Any other
    /// goes to the fewest requests in flight, ties in turn. `None` only when the set is
    /// empty.
    pub fn pick(
        &mut self,
        now: Instant,
        avoid: Option<&str>,
        affinity: Option<&str>,
    ) -> Option<String> {
        let n = self.replicas.len();
        let standing = |r: &Replica| (avoid == Some(r.url.as_str()), r.is_ejected(now));
        let index = match affinity {
            Some(key) => {
                let best = self.replicas.iter().map(standing).min()?;
                (0..n)
                    .filter(|&i| standing(&self.replicas[i]) == best)
                    .max_by_key(|&i| affinity_weight(key, &self.replicas[i].url))?
            }
            None => {
                let rank = |r: &Replica| (standing(r), r.in_flight);
                let best = self.replicas.iter().map(rank).min()?;
                let index = (0..n)
                    .map(|i| (self.cursor + i) % n)
                    .find(|&i| rank(&self.replicas[i]) == best)?;
                self.cursor = (index + 1) % n;
                index
            }
        };
        let replica = &mut self.replicas[index];
        replica.in_flight += 1;
        Some(replica.url.clone())
    }

    /// Counts the end of a request to `url` picked earlier. Failures in a row eject the
    /// replica, unless it is the last one not ejected: a request must always have somewhere
    /// to go, and the last one may be right (the failure was the request's, not its).
    pub fn finish(&mut self, url: &str, outcome: Outcome, now: Instant) -> Change {
        let policy = self.policy;
        let others_serving = self
            .replicas
            .iter()
            .filter(|r| r.url != url && !r.is_ejected(now))
            .count();
        let Some(replica) = self.replicas.iter_mut().find(|r| r.url == url) else {
            return Change::None;
        };
        replica.in_flight = replica.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Success => {
                replica.consecutive_failures = 0;
                replica.ejections = 0;
                Change::None
            }
            Outcome::Busy | Outcome::Abandoned => Change::None,
            Outcome::Failure => {
                replica.consecutive_failures += 1;
                // Failures of requests sent before the ejection change nothing.
                if replica.consecutive_failures < policy.failures
                    || replica.is_ejected(now)
                    || others_serving == 0
                {
                    return Change::None;
                }
                let length = policy
                    .base
                    .saturating_mul(1 << replica.ejections.min(16))
                    .min(policy.max);
                replica.ejected_until = Some(now + length);
                replica.ejections += 1;
                replica.consecutive_failures = 0;
                Change::Ejected(length)
            }
        }
    }

    /// How many replicas are set aside at `now`.
    pub fn ejected(&self, now: Instant) -> usize {
        self.replicas.iter().filter(|r| r.is_ejected(now)).count()
    }
}

/// A replica's weight for `key` in rendezvous hashing (FNV-1a of both): the same in every
/// gateway process, and a replica that leaves moves only its own keys.
fn affinity_weight(key: &str, url: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes().chain([0]).chain(url.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://r{i}")).collect()
    }

    fn policy() -> EjectionPolicy {
        EjectionPolicy {
            failures: 3,
            base: Duration::from_secs(10),
            max: Duration::from_secs(40),
        }
    }

    fn fail(b: &mut Balancer, url: &str, times: u32, now: Instant) -> Change {
        let mut last = Change::None;
        for _ in 0..times {
            b.replicas
                .iter_mut()
                .find(|r| r.url == url)
                .unwrap()
                .in_flight += 1;
            last = b.finish(url, Outcome::Failure, now);
        }
        last
    }

    #[test]
    fn equal_loads_take_turns() {
        let mut b = Balancer::new(&urls(3), policy());
        let now = Instant::now();
        let mut picked = Vec::new();
        for _ in 0..6 {
            let url = b.pick(now, None, None).unwrap();
            b.finish(&url, Outcome::Success, now);
            picked.push(url);
        }
        assert_eq!(
            picked,
            [
                "http://r0",
                "http://r1",
                "http://r2",
                "http://r0",
                "http://r1",
                "http://r2"
            ]
        );
    }

    #[test]
    fn the_least_loaded_replica_goes_first() {
        let mut b = Balancer::new(&urls(3), policy());
        let now = Instant::now();
        // Three outstanding: one each.
        let first: Vec<_> = (0..3).map(|_| b.pick(now, None, None).unwrap()).collect();
        assert_eq!(first, urls(3));
        // r1 answers; it alone has nothing in flight, so it takes the next two in a row
        // (the second once it answered again).
        b.finish("http://r1", Outcome::Success, now);
        assert_eq!(b.pick(now, None, None).unwrap(), "http://r1");
        b.finish("http://r1", Outcome::Success, now);
        assert_eq!(b.pick(now, None, None).unwrap(), "http://r1");
        assert_eq!(
            b.replicas().iter().map(|r| r.in_flight).collect::<Vec<_>>(),
            [1, 1, 1]
        );
    }

    #[test]
    fn a_retry_goes_elsewhere_when_it_can() {
        let mut b = Balancer::new(&urls(2), policy());
        let now = Instant::now();
        let first = b.pick(now, None, None).unwrap();
        b.finish(&first, Outcome::Failure, now);
        let retry = b.pick(now, Some(&first), None).unwrap();
        assert_ne!(retry, first);
        // With one replica the retry has nowhere else to go.
        let mut single = Balancer::new(&urls(1), policy());
        let only = single.pick(now, None, None).unwrap();
        single.finish(&only, Outcome::Failure, now);
        assert_eq!(single.pick(now, Some(&only), None).unwrap(), only);
    }

    #[test]
    fn failures_in_a_row_eject_for_a_doubling_capped_period() {
        let mut b = Balancer::new(&urls(2), policy());
        let t0 = Instant::now();
        assert_eq!(fail(&mut b, "http://r0", 2, t0), Change::None);
        assert_eq!(
            fail(&mut b, "http://r0", 1, t0),
            Change::Ejected(Duration::from_secs(10))
        );
        assert_eq!(b.ejected(t0), 1);
        // While ejected it gets nothing.
        for _ in 0..4 {
            let url = b.pick(t0, None, None).unwrap();
            assert_eq!(url, "http://r1");
            b.finish(&url, Outcome::Success, t0);
        }
        // Back after the period, on probation: failing again ejects for twice as long.
        let t1 = t0 + Duration::from_secs(10);
        assert!(!b.replicas()[0].is_ejected(t1));
        assert_eq!(
            fail(&mut b, "http://r0", 3, t1),
            Change::Ejected(Duration::from_secs(20))
        );
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(
            fail(&mut b, "http://r0", 3, t2),
            Change::Ejected(Duration::from_secs(40))
        );
        let t3 = t2 + Duration::from_secs(40);
        assert_eq!(
            fail(&mut b, "http://r0", 3, t3),
            Change::Ejected(Duration::from_secs(40)),
            "capped"
        );
        // A success forgives: the next ejection is the first again.
        let t4 = t3 + Duration::from_secs(40);
        b.replicas[0].in_flight += 1;
        b.finish("http://r0", Outcome::Success, t4);
        assert_eq!(
            fail(&mut b, "http://r0", 3, t4),
            Change::Ejected(Duration::from_secs(10))
        );
    }

    #[test]
    fn successes_and_busy_answers_break_a_run_of_failures_or_not() {
        let mut b = Balancer::new(&urls(2), policy());
        let now = Instant::now();
        fail(&mut b, "http://r0", 2, now);
        b.replicas[0].in_flight += 1;
        b.finish("http://r0", Outcome::Success, now);
        assert_eq!(fail(&mut b, "http://r0", 2, now), Change::None);
        // A busy answer is no failure, and no success either.
        b.replicas[0].in_flight += 1;
        b.finish("http://r0", Outcome::Busy, now);
        assert!(matches!(
            fail(&mut b, "http://r0", 1, now),
            Change::Ejected(_)
        ));
    }

    #[test]
    fn the_last_replica_standing_is_never_ejected() {
        let mut b = Balancer::new(&urls(2), policy());
        let now = Instant::now();
        assert!(matches!(
            fail(&mut b, "http://r0", 3, now),
            Change::Ejected(_)
        ));
        assert_eq!(fail(&mut b, "http://r1", 10, now), Change::None);
        assert_eq!(b.ejected(now), 1);
        let mut single = Balancer::new(&urls(1), policy());
        assert_eq!(fail(&mut single, "http://r0", 10, now), Change::None);
    }

    #[test]
    fn when_every_replica_is_ejected_requests_still_go_somewhere() {
        let mut b = Balancer::new(&urls(2), policy());
        let now = Instant::now();
        fail(&mut b, "http://r0", 3, now);
        // Ejected while another was serving, which was ejected too before r0 came back.
        b.replicas[1].ejected_until = Some(now + Duration::from_secs(5));
        assert_eq!(b.ejected(now), 2);
        assert!(b.pick(now, None, None).is_some());
        // A replica that left and came back is new.
        b.set_replicas(&[]);
        assert!(
            b.pick(now, None, None).is_none(),
            "an empty set has nothing"
        );
        b.set_replicas(&urls(2));
        assert_eq!(b.ejected(now), 0);
    }

    #[test]
    fn the_set_follows_the_directory() {
        let mut b = Balancer::new(&urls(3), policy());
        let now = Instant::now();
        let picked = b.pick(now, Some("http://r0"), None).unwrap();
        assert_eq!(picked, "http://r1");
        fail(&mut b, "http://r2", 2, now);
        // r0 stops heartbeating; r3 starts.
        let next = vec![
            "http://r1".to_owned(),
            "http://r2".to_owned(),
            "http://r3".to_owned(),
        ];
        assert!(b.set_replicas(&next));
        assert!(!b.set_replicas(&next), "no change the second time");
        let replicas = b.replicas();
        assert_eq!(
            replicas.iter().map(|r| r.url.as_str()).collect::<Vec<_>>(),
            ["http://r1", "http://r2", "http://r3"]
        );
        assert_eq!(replicas[0].in_flight, 1, "kept");
        assert_eq!(replicas[1].consecutive_failures, 2, "kept");
        // The request in flight on r0 ends after r0 left: nothing to count.
        assert_eq!(b.finish("http://r0", Outcome::Failure, now), Change::None);
        // r3 has nothing in flight: it goes first.
        assert_eq!(b.pick(now, None, None).unwrap(), "http://r3");
    }

    #[test]
    fn a_feed_keeps_to_its_replica_while_it_serves() {
        let mut b = Balancer::new(&urls(3), policy());
        let now = Instant::now();
        let keys: Vec<String> = (0..30).map(|i| format!("/feed?customer_id={i}")).collect();
        let home: Vec<String> = keys
            .iter()
            .map(|k| b.pick(now, None, Some(k)).unwrap())
            .collect();
        // Spread over the replicas, and the same answer again whatever is in flight.
        for url in urls(3) {
            assert!(home.contains(&url), "no feed on {url}");
        }
        for (key, url) in keys.iter().zip(&home) {
            assert_eq!(&b.pick(now, None, Some(key)).unwrap(), url);
        }
        // A replica ejected gives its feeds to the others and no one else's moves.
        fail(&mut b, "http://r1", 3, now);
        for (key, url) in keys.iter().zip(&home) {
            let now_on = b.pick(now, None, Some(key)).unwrap();
            if url == "http://r1" {
                assert_ne!(now_on, "http://r1");
            } else {
                assert_eq!(&now_on, url);
            }
        }
    }
}
