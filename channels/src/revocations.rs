//! Revoked sessions, per node, and the sockets waiting to hear about them.
//!
//! Access tokens are verified without a store round trip, so a revoked session's access
//! tokens would stay valid until they expire. Every node therefore keeps the set of
//! sessions revoked within the last access-token lifetime (older ones have no live token
//! left), fed by control messages on `ctl.<customer>` from whichever node revoked, and
//! filled from the store at start. The trade-off: a node that misses a control message (a
//! bus outage) accepts that session's access token until it expires (at most the access
//! token TTL); refresh always checks the store, so the session cannot be extended.

use dashmap::DashMap;
use tokio::sync::watch;

pub struct Revocations {
    /// Session id → Unix second after which no access token of it can be valid.
    revoked: DashMap<String, i64>,
    watchers: DashMap<String, watch::Sender<bool>>,
    ttl_s: i64,
    max: usize,
}

impl Revocations {
    pub fn new(access_token_ttl_s: i64, max: usize) -> Self {
        Self {
            revoked: DashMap::new(),
            watchers: DashMap::new(),
            ttl_s: access_token_ttl_s.max(1),
            max: max.max(16),
        }
    }

    pub fn revoke(&self, sid: &str, now_unix: i64) {
        if self.revoked.len() >= self.max {
            self.revoked.retain(|_, until| *until > now_unix);
        }
        self.revoked
            .insert(sid.to_owned(), now_unix + self.ttl_s + 1);
        if let Some(tx) = self.watchers.get(sid) {
            tx.send_replace(true);
        }
    }

    pub fn is_revoked(&self, sid: &str) -> bool {
        self.revoked.contains_key(sid)
    }

    /// A receiver that turns true when `sid` is revoked (at once if it already is).
    pub fn watch(&self, sid: &str) -> watch::Receiver<bool> {
        let receiver = self
            .watchers
            .entry(sid.to_owned())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe();
        if self.is_revoked(sid)
            && let Some(tx) = self.watchers.get(sid)
        {
            tx.send_replace(true);
        }
        receiver
    }

    /// Call when a watcher goes away (with its receiver still alive).
    pub fn unwatch(&self, sid: &str) {
        self.watchers
            .remove_if(sid, |_, tx| tx.receiver_count() <= 1);
    }

    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }
}

/// Resolves when the receiver turns true; never if its sender is gone.
pub async fn revoked(receiver: &mut watch::Receiver<bool>) {
    if receiver.wait_for(|r| *r).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_hear_revocations() {
        let revocations = Revocations::new(60, 100);
        let mut a = revocations.watch("s1");
        let mut b = revocations.watch("s1");
        assert!(!revocations.is_revoked("s1"));
        revocations.revoke("s1", 0);
        assert!(revocations.is_revoked("s1"));
        tokio::time::timeout(std::time::Duration::from_secs(1), revoked(&mut a))
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), revoked(&mut b))
            .await
            .unwrap();
        // Watching an already revoked session fires at once.
        let mut late = revocations.watch("s1");
        tokio::time::timeout(std::time::Duration::from_secs(1), revoked(&mut late))
            .await
            .unwrap();
    }

    #[test]
    fn bounded_by_expiry() {
        let revocations = Revocations::new(10, 16);
        for n in 0..16 {
            revocations.revoke(&format!("s{n}"), 0);
        }
        revocations.revoke("late", 100);
        assert_eq!(revocations.len(), 1);
        assert!(revocations.is_revoked("late"));
    }
}
