//! Sign-in throttling, as identity servers do it: every password route counts its attempts per account (the
//! normalised email, known or not, so throttling says nothing about which accounts exist) and per client address;
//! after a few failures each further attempt must wait an exponentially growing back-off after the last one, and
//! after many the key is locked for a while. The check happens before any password hashing. An attempt is counted
//! *before* its password is checked (compare-and-set on the stored counter), so concurrent guesses cannot all pass
//! one check; a sign-in that succeeds then clears its account's counter and takes its own count back off the
//! address. Counters live in the store, so every replica sees the same ones.

use std::net::IpAddr;

use evershell_core::{Error, Result, Timestamp};
use evershell_store::{LoginClaim, LoginCounter};

use crate::App;
use crate::secrets;

/// Thresholds of one kind of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    /// Failures allowed before back-off starts.
    pub free_failures: i64,
    /// Failures after which the key is locked for `LoginPolicy::lock_ms`.
    pub lock_after: i64,
}

/// The throttle's configuration (`[login]` in the server config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPolicy {
    pub account: Tier,
    pub address: Tier,
    /// The first back-off; each further failure doubles it, up to `backoff_max_ms`.
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    /// How long a key stays locked once it reached `lock_after` failures.
    pub lock_ms: i64,
    /// A counter with no new failure for this long starts again from zero (at least `lock_ms`).
    pub reset_after_ms: i64,
    /// A refused attempt is answered after this long (or its whole wait, if shorter): a timer, no CPU, so a
    /// closed-loop flood of refused guesses sends a few requests a second per connection instead of thousands.
    pub refusal_delay_ms: i64,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self {
            account: Tier { free_failures: 5, lock_after: 10 },
            address: Tier { free_failures: 20, lock_after: 100 },
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            lock_ms: 15 * 60_000,
            reset_after_ms: 15 * 60_000,
            refusal_delay_ms: 1_000,
        }
    }
}

impl LoginPolicy {
    /// Refuse settings that would not throttle or would never forget.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, t) in [("account", self.account), ("address", self.address)] {
            if t.free_failures < 1 {
                return Err(format!("login.{name}_free_failures must be at least 1"));
            }
            if t.lock_after <= t.free_failures {
                return Err(format!("login.{name}_lock_after must be greater than login.{name}_free_failures"));
            }
        }
        if self.backoff_base_ms < 1 || self.backoff_max_ms < self.backoff_base_ms {
            return Err("login.backoff_base_ms must be at least 1 and at most login.backoff_max_ms".into());
        }
        if self.lock_ms < self.backoff_max_ms {
            return Err("login.lock_ms must be at least login.backoff_max_ms".into());
        }
        if self.refusal_delay_ms < 0 {
            return Err("login.refusal_delay_ms must not be negative".into());
        }
        if self.reset_after_ms < self.lock_ms {
            return Err("login.reset_after_ms must be at least login.lock_ms".into());
        }
        Ok(())
    }

    /// How long after the last failure the next attempt must wait, with `failures` on the counter.
    pub fn delay_ms(&self, tier: Tier, failures: i64) -> i64 {
        if failures < tier.free_failures {
            0
        } else if failures >= tier.lock_after {
            self.lock_ms
        } else {
            let doublings = (failures - tier.free_failures).min(40) as u32;
            self.backoff_base_ms.saturating_mul(1i64 << doublings).min(self.backoff_max_ms)
        }
    }

    /// The failures a stored counter still counts at `now` (zero once it is older than the reset window).
    pub fn live_failures(&self, c: Option<&LoginCounter>, now: Timestamp) -> i64 {
        match c {
            Some(c) if now.millis() - c.last_failure_at.millis() < self.reset_after_ms => c.failures,
            _ => 0,
        }
    }
}

/// What a throttle key stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Account,
    Address,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Account => "account",
            KeyKind::Address => "address",
        }
    }
}

/// One counter an attempt is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleKey {
    pub kind: KeyKind,
    /// sha256 hex of `account:<email>` / `address:<ip>`: bounded size, and no email in the table.
    pub stored: String,
}

/// The keys of an attempt for `email` (normalised) from `client`. IPv6 clients are counted per /64, the block one
/// host usually holds.
pub fn keys(email: Option<&str>, client: Option<IpAddr>) -> Vec<ThrottleKey> {
    let mut out = vec![];
    if let Some(e) = email {
        out.push(ThrottleKey { kind: KeyKind::Account, stored: secrets::hash_secret(&format!("account:{e}")) });
    }
    let addr = match client {
        Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(|v4| v4.to_string()).unwrap_or_default(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        None => "unknown".into(),
    };
    out.push(ThrottleKey { kind: KeyKind::Address, stored: secrets::hash_secret(&format!("address:{addr}")) });
    out
}

/// A refused attempt: which key refused it, for how long, and its counter as read.
#[derive(Debug, Clone)]
pub struct Throttled {
    pub kind: KeyKind,
    pub retry_after_ms: i64,
    pub counter: LoginCounter,
}

impl Throttled {
    pub fn retry_after_seconds(&self) -> u64 {
        ((self.retry_after_ms + 999) / 1000).max(1) as u64
    }

    pub fn error(&self) -> Error {
        Error::too_many_attempts(self.retry_after_seconds())
    }
}

/// Decide on an attempt over the counters read (pure): `Err` with the longest wait among the keys that refuse it,
/// else the claims that count it.
pub fn decide(
    policy: &LoginPolicy,
    keys: &[ThrottleKey],
    counters: &[LoginCounter],
    now: Timestamp,
) -> std::result::Result<Vec<LoginClaim>, Throttled> {
    let mut refused: Option<Throttled> = None;
    let mut claims = Vec::with_capacity(keys.len());
    for k in keys {
        let c = counters.iter().find(|c| c.key == k.stored);
        let tier = match k.kind {
            KeyKind::Account => policy.account,
            KeyKind::Address => policy.address,
        };
        let live = policy.live_failures(c, now);
        if let Some(c) = c {
            let wait = c.last_failure_at.millis() + policy.delay_ms(tier, live) - now.millis();
            if live > 0 && wait > 0 && refused.as_ref().is_none_or(|r| wait > r.retry_after_ms) {
                refused = Some(Throttled { kind: k.kind, retry_after_ms: wait, counter: c.clone() });
            }
        }
        claims.push(LoginClaim { key: k.stored.clone(), seen: c.cloned(), failures: live + 1 });
    }
    match refused {
        Some(r) => Err(r),
        None => Ok(claims),
    }
}

/// Refusals this server answered, remembered until they expire, so a flood of refused attempts costs no store
/// read. Sound across replicas: a refused key's counter cannot clear before its wait is over (only an attempt that
/// passed the check can sign in and clear it), so a remembered refusal never outlives the stored one.
#[derive(Default)]
pub struct Refusals(std::sync::Mutex<std::collections::HashMap<String, (i64, Throttled)>>);

/// Remembered refusals beyond which expired ones are swept on the next insert.
const REFUSALS_SWEEP_AT: usize = 10_000;

impl Refusals {
    fn check(&self, keys: &[ThrottleKey], now: Timestamp) -> Option<Throttled> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .filter_map(|k| map.get(&k.stored))
            .filter(|(until, _)| *until > now.millis())
            .max_by_key(|(until, _)| *until)
            .map(|(until, t)| {
                let mut t = t.clone();
                t.retry_after_ms = until - now.millis();
                t
            })
    }

    /// The period of `key` was reported (`login_throttled` written, by this server or another).
    pub(crate) fn mark_noted(&self, key: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, t)) = map.get_mut(key) {
            t.counter.noted_at = Some(t.counter.last_failure_at);
        }
    }

    fn remember(&self, t: &Throttled, now: Timestamp) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= REFUSALS_SWEEP_AT {
            map.retain(|_, (until, _)| *until > now.millis());
        }
        map.insert(t.counter.key.clone(), (now.millis() + t.retry_after_ms, t.clone()));
    }
}

/// How often an attempt re-reads after losing the compare-and-set to a concurrent one before it is refused.
const MAX_RACES: usize = 8;

impl App {
    /// Hold a refused attempt for `refusal_delay_ms` (at most its wait), then the 429 with the wait that remains.
    pub(crate) async fn refuse(&self, t: &Throttled) -> Error {
        let hold = t.retry_after_ms.min(self.config.login.refusal_delay_ms).max(0);
        tokio::time::sleep(std::time::Duration::from_millis(hold as u64)).await;
        Throttled { retry_after_ms: t.retry_after_ms - hold, ..t.clone() }.error()
    }

    pub(crate) fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Check the throttle for an attempt and count it. `Ok(Err(..))` when the attempt must be refused (no password
    /// work may happen then).
    pub(crate) async fn begin_attempt(&self, keys: &[ThrottleKey]) -> Result<std::result::Result<(), Throttled>> {
        let stored: Vec<String> = keys.iter().map(|k| k.stored.clone()).collect();
        let policy = &self.config.login;
        if let Some(t) = self.refusals.check(keys, Timestamp::now()) {
            return Ok(Err(t));
        }
        for _ in 0..MAX_RACES {
            let counters = self.store.login_counters(&stored).await?;
            let now = Timestamp::now();
            match decide(policy, keys, &counters, now) {
                Err(t) => {
                    self.refusals.remember(&t, now);
                    return Ok(Err(t));
                }
                Ok(claims) => {
                    let stale_before = now.plus_millis(-policy.reset_after_ms);
                    if self.store.count_login_attempt(&claims, now, stale_before).await? {
                        return Ok(Ok(()));
                    }
                }
            }
        }
        // Lost every race: a flood is counting on these keys right now. Refuse like the back-off would.
        let counter = LoginCounter {
            key: stored[0].clone(),
            failures: 0,
            last_failure_at: Timestamp::now(),
            noted_at: Some(Timestamp::now()),
        };
        Ok(Err(Throttled { kind: keys[0].kind, retry_after_ms: policy.backoff_base_ms, counter }))
    }

    /// A counted attempt signed in: its account starts again from zero, and the address gets its count back.
    pub(crate) async fn attempt_succeeded(&self, keys: &[ThrottleKey]) -> Result<()> {
        let pick = |kind| keys.iter().filter(|k| k.kind == kind).map(|k| k.stored.clone()).collect::<Vec<_>>();
        self.store.settle_login_attempt(&pick(KeyKind::Account), &pick(KeyKind::Address), &[]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(key: &str, failures: i64, at: i64) -> LoginCounter {
        LoginCounter { key: key.into(), failures, last_failure_at: Timestamp::from_millis(at), noted_at: None }
    }

    #[test]
    fn back_off_doubles_then_locks() {
        let p = LoginPolicy::default();
        let t = p.account;
        assert_eq!((0..5).map(|n| p.delay_ms(t, n)).collect::<Vec<_>>(), vec![0; 5]);
        assert_eq!(p.delay_ms(t, 5), 1_000);
        assert_eq!(p.delay_ms(t, 6), 2_000);
        assert_eq!(p.delay_ms(t, 9), 16_000);
        assert_eq!(p.delay_ms(t, 10), 15 * 60_000);
        let capped = LoginPolicy { backoff_max_ms: 3_000, ..p.clone() };
        assert_eq!(capped.delay_ms(t, 8), 3_000);
        assert_eq!(p.delay_ms(Tier { free_failures: 1, lock_after: 1_000 }, 900), 60_000);
        p.validate().unwrap();
        assert!(LoginPolicy { reset_after_ms: 1, ..p.clone() }.validate().is_err());
        assert!(LoginPolicy { account: Tier { free_failures: 5, lock_after: 5 }, ..p }.validate().is_err());
    }

    #[test]
    fn decide_refuses_with_the_longest_wait_and_counts_otherwise() {
        let p = LoginPolicy::default();
        let keys = keys(Some("a@x.example"), Some("10.0.0.1".parse().unwrap()));
        let (acct, addr) = (keys[0].stored.clone(), keys[1].stored.clone());
        let now = Timestamp::from_millis(100_000);
        // Nothing stored: counted as the first failure on both.
        let claims = decide(&p, &keys, &[], now).unwrap();
        assert_eq!(claims.iter().map(|c| (c.seen.is_none(), c.failures)).collect::<Vec<_>>(), [(true, 1), (true, 1)]);
        // Four failures: still free.
        assert!(decide(&p, &keys, &[counter(&acct, 4, 99_999)], now).is_ok());
        // Five failures 400 ms ago: wait 600 ms more, named by the account key.
        let t = decide(&p, &keys, &[counter(&acct, 5, 99_600)], now).unwrap_err();
        assert_eq!((t.kind, t.retry_after_ms, t.retry_after_seconds()), (KeyKind::Account, 600, 1));
        // After the wait the attempt is counted as the sixth.
        let claims = decide(&p, &keys, &[counter(&acct, 5, 99_000)], now).unwrap();
        assert_eq!(claims[0].failures, 6);
        // The address lock outlasts the account's back-off.
        let t = decide(&p, &keys, &[counter(&acct, 5, 99_600), counter(&addr, 100, 99_000)], now).unwrap_err();
        assert_eq!((t.kind, t.retry_after_ms), (KeyKind::Address, 15 * 60_000 - 1_000));
        // A counter past the reset window starts again from one.
        let old = now.millis() - p.reset_after_ms;
        let claims = decide(&p, &keys, &[counter(&acct, 10, old)], now).unwrap();
        assert_eq!(claims[0].failures, 1);
    }

    #[test]
    fn remembered_refusals_last_exactly_their_wait() {
        let r = Refusals::default();
        let keys = keys(Some("a@x.example"), None);
        let t =
            Throttled { kind: KeyKind::Account, retry_after_ms: 1_000, counter: counter(&keys[0].stored, 5, 9_000) };
        r.remember(&t, Timestamp::from_millis(10_000));
        let again = r.check(&keys, Timestamp::from_millis(10_400)).unwrap();
        assert_eq!((again.kind, again.retry_after_ms, again.counter.noted_at), (KeyKind::Account, 600, None));
        r.mark_noted(&keys[0].stored);
        assert!(r.check(&keys, Timestamp::from_millis(10_999)).unwrap().counter.noted_at.is_some());
        assert!(r.check(&keys, Timestamp::from_millis(11_000)).is_none(), "over at the advertised time");
    }

    #[test]
    fn keys_hash_the_email_and_group_ipv6_by_64() {
        let a = keys(Some("a@x.example"), Some("2001:db8:1:2:3:4:5:6".parse().unwrap()));
        let b = keys(Some("a@x.example"), Some("2001:db8:1:2:ff::1".parse().unwrap()));
        let c = keys(Some("b@x.example"), Some("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(a, b);
        assert_ne!(a[0], c[0]);
        assert_ne!(a[1], c[1]);
        assert!(!a[0].stored.contains('@'));
        let mapped = keys(None, Some("::ffff:10.0.0.1".parse().unwrap()));
        assert_eq!(mapped, keys(None, Some("10.0.0.1".parse().unwrap())));
        assert_eq!(mapped.len(), 1);
    }
}
