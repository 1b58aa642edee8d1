//! Resource limits of the HTTP layer: what one caller, one address or one connection may hold.
//!
//! *Architecture Invariant*: limits on every connection. A connection is admitted only under the total
//! and per-address caps ([`ConnLimiter`]); it must send its first request within the header timeout and
//! is closed when idle ([`Activity`]); request bodies are read only after authentication, within a
//! deadline, and only while the server-wide budget of in-flight body bytes ([`Limits::inflight_body_bytes`])
//! has room. The token endpoint's failed attempts are metered per client id and per address
//! ([`RateLimiter`]), and its secret checks run a few at a time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket's shape: `burst` attempts at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub per_minute: u32,
}

/// The limits `rsvault serve` enforces (the README's serve options document the defaults).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest body of an anonymous request (the token endpoint's form).
    pub anonymous_body_bytes: usize,
    /// Time allowed to receive a whole request body.
    pub body_timeout: Duration,
    /// Time allowed for the TLS handshake and a request's headers (and for the first request of a
    /// connection to start).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections from one peer address.
    pub max_connections_per_addr: usize,
    /// HTTP/2 streams open at once on one connection.
    pub h2_max_streams: u32,
    /// Request body bytes held in memory at once, server-wide; beyond it requests get 503 ServerBusy.
    pub inflight_body_bytes: usize,
    /// Token requests per client id (successful ones are given back).
    pub token_rate_per_client: Rate,
    /// Token requests per peer address (successful ones are given back).
    pub token_rate_per_addr: Rate,
    /// Client-secret checks running at once; beyond it the token endpoint answers 503 at once.
    pub secret_checks: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            anonymous_body_bytes: 16 * 1024,
            body_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 1024,
            max_connections_per_addr: 128,
            h2_max_streams: 32,
            inflight_body_bytes: 64 * 1024 * 1024,
            token_rate_per_client: Rate {
                burst: 10,
                per_minute: 10,
            },
            token_rate_per_addr: Rate {
                burst: 60,
                per_minute: 60,
            },
            secret_checks: 4,
        }
    }
}

/// The address a peer is metered under: itself for IPv4 (an IPv4-mapped IPv6 address as IPv4), its /64
/// for IPv6 (one host commonly holds a whole /64).
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The shared meters requests draw on.
#[derive(Debug)]
pub struct Guards {
    /// Permits are bytes of request bodies held in memory.
    pub body_budget: Arc<tokio::sync::Semaphore>,
    pub token_by_client: RateLimiter,
    pub token_by_addr: RateLimiter,
    pub secret_checks: Arc<tokio::sync::Semaphore>,
}

impl Guards {
    pub fn new(l: &Limits) -> Guards {
        Guards {
            body_budget: Arc::new(tokio::sync::Semaphore::new(
                l.inflight_body_bytes.min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            token_by_client: RateLimiter::new(l.token_rate_per_client),
            token_by_addr: RateLimiter::new(l.token_rate_per_addr),
            secret_checks: Arc::new(tokio::sync::Semaphore::new(l.secret_checks.max(1))),
        }
    }
}

/// Admits connections under a total and a per-address cap.
#[derive(Debug)]
pub struct ConnLimiter {
    max_total: usize,
    max_per_addr: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Holds one admitted connection's place; gives it back when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl ConnLimiter {
    pub fn new(max_total: usize, max_per_addr: usize) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max_total: max_total.max(1),
            max_per_addr: max_per_addr.max(1),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a connection from `ip`, or `None` when either cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let ip = peer_key(ip);
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let per = g.1.get(&ip).copied().unwrap_or(0);
        if g.0 >= self.max_total || per >= self.max_per_addr {
            return None;
        }
        g.0 += 1;
        g.1.insert(ip, per + 1);
        Some(ConnSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut g = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

/// What one connection is doing: requests in flight and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    served: AtomicU64,
    /// Milliseconds after `born` of the last request start or end.
    last_ms: AtomicU64,
}

/// Counts a request in flight until dropped.
pub struct InFlight(Arc<Activity>);

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Marks a request started.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// When the connection becomes closable if nothing happens: `None` while a request is in flight.
    /// Before its first request a connection gets `first`, afterwards `idle`.
    pub fn idle_deadline(&self, first: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let wait = if self.served.load(Ordering::Relaxed) == 0 {
            first
        } else {
            idle
        };
        Some(self.born + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + wait)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Token buckets by key (a client id, a peer address); keys whose bucket is full again are forgotten.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// At most this many keys are remembered; beyond it full buckets are dropped, then the oldest.
const MAX_KEYS: usize = 10_000;

impl RateLimiter {
    pub fn new(rate: Rate) -> RateLimiter {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn per_sec(&self) -> f64 {
        f64::from(self.rate.per_minute.max(1)) / 60.0
    }

    fn level(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        (tokens + now.duration_since(since).as_secs_f64() * self.per_sec()).min(f64::from(self.rate.burst.max(1)))
    }

    /// Seconds until `key` may try again (0: now), without taking anything.
    pub fn wait_secs(&self, key: &str) -> u64 {
        let now = Instant::now();
        let g = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match g.get(key) {
            Some(&(t, since)) => self.secs_until_one(self.level(t, since, now)),
            None => 0,
        }
    }

    fn secs_until_one(&self, level: f64) -> u64 {
        if level >= 1.0 {
            0
        } else {
            ((1.0 - level) / self.per_sec()).ceil().max(1.0) as u64
        }
    }

    /// Takes one attempt for `key`; `Err(seconds to wait)` when its bucket is empty.
    pub fn take(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut g = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= MAX_KEYS && !g.contains_key(key) {
            let full = f64::from(self.rate.burst.max(1));
            g.retain(|_, (t, since)| self.level(*t, *since, now) < full);
            if g.len() >= MAX_KEYS {
                if let Some(oldest) = g.iter().min_by_key(|(_, (_, s))| *s).map(|(k, _)| k.clone()) {
                    g.remove(&oldest);
                }
            }
        }
        let full = f64::from(self.rate.burst.max(1));
        let entry = g.entry(key.to_string()).or_insert((full, now));
        let level = self.level(entry.0, entry.1, now);
        if level < 1.0 {
            return Err(self.secs_until_one(level));
        }
        *entry = (level - 1.0, now);
        Ok(())
    }

    /// True when `key` has nothing taken (never seen, or refilled to its burst).
    pub fn is_full(&self, key: &str) -> bool {
        let now = Instant::now();
        let g = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match g.get(key) {
            None => true,
            Some(&(t, since)) => self.level(t, since, now) >= f64::from(self.rate.burst.max(1)),
        }
    }

    /// Gives back one attempt taken for `key` (a successful login does not count against it).
    pub fn give_back(&self, key: &str) {
        let now = Instant::now();
        let mut g = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = g.get_mut(key) {
            let level = self.level(entry.0, entry.1, now) + 1.0;
            *entry = (level.min(f64::from(self.rate.burst.max(1))), now);
        }
    }
}

/// Lets a repeated log line through at most once per period, counting what it held back.
#[derive(Debug)]
pub struct LogEvery {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogEvery {
    pub fn new(period: Duration) -> LogEvery {
        LogEvery {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts one event; `Some(n)` when a line should be written now for `n` events (this one included).
    pub fn hit(&self) -> Option<u64> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.1 += 1;
        let now = Instant::now();
        let due = match g.0 {
            None => true,
            Some(t) => now.duration_since(t) >= self.period,
        };
        if due {
            let n = g.1;
            *g = (Some(now), 0);
            Some(n)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_in_all_and_per_address() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert!(l.admit(a).is_none(), "per-address cap");
        let _b1 = l.admit(b).unwrap();
        assert!(l.admit(b).is_none(), "total cap");
        drop(a1);
        assert_eq!(l.open(), 2);
        assert!(l.admit(a).is_some(), "a closed connection gives its place back");
    }

    #[test]
    fn ipv6_peers_are_metered_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(peer_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        let l = ConnLimiter::new(10, 1);
        let _a = l.admit(a).unwrap();
        assert!(l.admit(b).is_none(), "the same /64");
        assert!(l.admit(c).is_some());
    }

    #[test]
    fn buckets_refuse_beyond_the_burst_and_give_back_successes() {
        let r = RateLimiter::new(Rate {
            burst: 3,
            per_minute: 6,
        });
        for _ in 0..3 {
            r.take("c").unwrap();
        }
        let wait = r.take("c").unwrap_err();
        assert!((1..=10).contains(&wait), "{wait}");
        assert_eq!(r.wait_secs("c"), wait);
        assert!(r.take("other").is_ok(), "keys are independent");
        r.give_back("c");
        assert!(r.take("c").is_ok(), "a success is given back");
        assert_eq!(r.wait_secs("never-seen"), 0);
        assert!(r.is_full("never-seen") && !r.is_full("c"));
    }

    #[test]
    fn repeated_log_lines_are_bounded() {
        let l = LogEvery::new(Duration::from_secs(3600));
        assert_eq!(l.hit(), Some(1));
        for _ in 0..100 {
            assert_eq!(l.hit(), None);
        }
    }

    #[test]
    fn idle_deadlines_wait_for_requests_in_flight() {
        let a = Activity::new();
        let first = a
            .idle_deadline(Duration::from_secs(1), Duration::from_secs(100))
            .unwrap();
        assert!(first <= Instant::now() + Duration::from_secs(1));
        let req = a.start();
        assert!(a
            .idle_deadline(Duration::from_secs(1), Duration::from_secs(100))
            .is_none());
        drop(req);
        let later = a
            .idle_deadline(Duration::from_secs(1), Duration::from_secs(100))
            .unwrap();
        assert!(later > Instant::now() + Duration::from_secs(90));
    }
}
