//! Tokens already verified, so a client's next request with the same token costs a map
//! lookup instead of an Ed25519 verification (about a hundred microseconds here).
//!
//! Keyed by the whole token text, so only byte-identical tokens hit; a hit is used only
//! while the token is unexpired and the key that signed it is still trusted (checked
//! by the caller). Bounded at `capacity` entries, evicted by CLOCK (second chance): a
//! full cache evicts the first entry, going round, that was not used since the hand
//! last passed it. Unlike the two half-size generations it replaces, every slot is
//! usable — a population of live tokens up to the capacity stays entirely cached — and
//! tokens seen only once (a scan, a flood of forgeries never gets here) go first.
//!
//! A hit runs on every guarded request at the gateway, so it costs one hash of the token
//! with foldhash (seeded per process; only verified tokens are ever inserted, so a client
//! cannot fill a bucket with chosen keys) and one clone of the claims — nothing else.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::Claims;

pub(crate) struct VerifiedTokens {
    clock: Mutex<Clock>,
    capacity: usize,
}

#[derive(Default)]
struct Clock {
    /// Token → its slot.
    slots_by_token: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    slots: Vec<Slot>,
    /// The next slot considered for eviction.
    hand: usize,
}

struct Slot {
    token: Arc<str>,
    entry: Entry,
    /// Used since the hand last passed.
    referenced: bool,
}

pub(crate) struct Entry {
    pub(crate) claims: Claims,
    pub(crate) kid: Box<str>,
}

impl VerifiedTokens {
    /// At most `capacity` tokens (0: the cache is off).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            clock: Mutex::new(Clock::default()),
            capacity,
        }
    }

    /// The claims remembered for `token` if `usable` accepts its entry (unexpired, its
    /// key still trusted); only the claims are copied out.
    pub(crate) fn get(&self, token: &str, usable: impl FnOnce(&Entry) -> bool) -> Option<Claims> {
        if self.capacity == 0 {
            return None;
        }
        let mut clock = self.clock.lock().ok()?;
        let index = *clock.slots_by_token.get(token)?;
        let slot = clock.slots.get_mut(index)?;
        slot.referenced = true;
        usable(&slot.entry).then(|| slot.entry.claims.clone())
    }

    pub(crate) fn insert(&self, token: &str, claims: Claims, kid: &str) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut clock) = self.clock.lock() else {
            return;
        };
        let entry = Entry {
            claims,
            kid: kid.into(),
        };
        if let Some(&index) = clock.slots_by_token.get(token)
            && let Some(slot) = clock.slots.get_mut(index)
        {
            slot.entry = entry;
            slot.referenced = true;
            return;
        }
        let token: Arc<str> = token.into();
        let slot = Slot {
            token: token.clone(),
            entry,
            referenced: false,
        };
        if clock.slots.len() < self.capacity {
            let index = clock.slots.len();
            clock.slots.push(slot);
            clock.slots_by_token.insert(token, index);
            return;
        }
        // Full: give each used entry a second chance. At most one full turn clears
        // every mark, so this ends, in O(1) steps on average.
        let victim = loop {
            let hand = clock.hand;
            clock.hand = (hand + 1) % clock.slots.len();
            match clock.slots.get_mut(hand) {
                Some(candidate) if candidate.referenced => candidate.referenced = false,
                _ => break hand,
            }
        };
        if let Some(evicted) = clock
            .slots
            .get_mut(victim)
            .map(|old| std::mem::replace(old, slot))
        {
            clock.slots_by_token.remove(&evicted.token);
        }
        clock.slots_by_token.insert(token, victim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str) -> Claims {
        Claims {
            sub: sub.into(),
            username: "u".into(),
            admin: false,
            iat: 0,
            exp: 1,
            iss: "i".into(),
        }
    }

    #[test]
    fn size_is_bounded_and_recently_used_entries_survive() {
        let cache = VerifiedTokens::new(3);
        cache.insert("a", claims("a"), "k");
        cache.insert("b", claims("b"), "k");
        cache.insert("c", claims("c"), "k");
        // Full; a and c are used again, b is not: b is the one to go.
        assert_eq!(cache.get("a", |_| true).map(|c| c.sub), Some("a".into()));
        assert!(cache.get("c", |_| true).is_some());
        cache.insert("d", claims("d"), "k");
        assert!(cache.get("b", |_| true).is_none());
        for kept in ["a", "c", "d"] {
            assert_eq!(
                cache.get(kept, |_| true).map(|c| c.sub),
                Some(kept.into()),
                "{kept}"
            );
        }
        for n in 0..100 {
            cache.insert(&n.to_string(), claims("n"), "k");
        }
        let clock = cache.clock.lock().expect("lock");
        assert_eq!(clock.slots.len(), 3);
        assert_eq!(clock.slots_by_token.len(), 3);
        for (token, &index) in &clock.slots_by_token {
            assert_eq!(clock.slots[index].token, *token);
        }
    }

    #[test]
    fn a_population_as_large_as_the_capacity_stays_cached() {
        let cache = VerifiedTokens::new(1000);
        for n in 0..1000 {
            cache.insert(&n.to_string(), claims("n"), "k");
        }
        // Used in any order, again and again: nothing is evicted.
        for round in 0..3 {
            for n in (0..1000).rev() {
                assert!(
                    cache.get(&n.to_string(), |_| true).is_some(),
                    "{round}: {n}"
                );
            }
        }
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let cache = VerifiedTokens::new(0);
        cache.insert("a", claims("a"), "k");
        assert!(cache.get("a", |_| true).is_none());
    }

    #[test]
    fn an_entry_the_caller_refuses_is_not_handed_out() {
        let cache = VerifiedTokens::new(2);
        cache.insert("a", claims("a"), "k1");
        assert!(cache.get("a", |e| &*e.kid == "k2").is_none());
        assert_eq!(
            cache.get("a", |e| &*e.kid == "k1").map(|c| c.sub),
            Some("a".into())
        );
    }
}
