//! Tokens already verified, so a client's next request with the same token costs a map
//! lookup instead of an Ed25519 verification (tens of microseconds).
//!
//! Keyed by the whole token text, so only byte-identical tokens hit; a hit is used only
//! while the token is unexpired and the key that signed it is still trusted (checked
//! by the caller). Bounded by two generations: when the young one is full it becomes the
//! old one and the previous old one is dropped; an old entry that is used again moves
//! back to the young generation. That is an approximate LRU with O(1) work and at most
//! `2 × generation` entries.

use std::{collections::HashMap, sync::Mutex};

use crate::Claims;

pub(crate) struct VerifiedTokens {
    generations: Mutex<Generations>,
    generation_size: usize,
}

#[derive(Default)]
struct Generations {
    young: HashMap<Box<str>, Entry>,
    old: HashMap<Box<str>, Entry>,
}

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) claims: Claims,
    pub(crate) kid: Box<str>,
}

impl VerifiedTokens {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            generations: Mutex::new(Generations::default()),
            // 0 turns the cache off; otherwise at least one entry per generation.
            generation_size: if capacity == 0 {
                0
            } else {
                (capacity / 2).max(1)
            },
        }
    }

    pub(crate) fn get(&self, token: &str) -> Option<Entry> {
        if self.generation_size == 0 {
            return None;
        }
        let mut generations = self.generations.lock().ok()?;
        if let Some(entry) = generations.young.get(token) {
            return Some(entry.clone());
        }
        let (token, entry) = generations.old.remove_entry(token)?;
        let found = entry.clone();
        self.insert_locked(&mut generations, token, entry);
        Some(found)
    }

    pub(crate) fn insert(&self, token: &str, claims: Claims, kid: &str) {
        if self.generation_size == 0 {
            return;
        }
        if let Ok(mut generations) = self.generations.lock() {
            let entry = Entry {
                claims,
                kid: kid.into(),
            };
            self.insert_locked(&mut generations, token.into(), entry);
        }
    }

    fn insert_locked(&self, generations: &mut Generations, token: Box<str>, entry: Entry) {
        if generations.young.len() >= self.generation_size {
            generations.old = std::mem::take(&mut generations.young);
        }
        generations.young.insert(token, entry);
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
        let cache = VerifiedTokens::new(4);
        cache.insert("a", claims("a"), "k");
        cache.insert("b", claims("b"), "k");
        // Young generation full: a and b become old.
        cache.insert("c", claims("c"), "k");
        // Using a moves it back to young (young is now c, a → full).
        assert_eq!(cache.get("a").map(|e| e.claims.sub), Some("a".into()));
        // d rotates again: old = {c, a}, b is gone.
        cache.insert("d", claims("d"), "k");
        assert!(cache.get("b").is_none());
        assert!(cache.get("c").is_some());
        assert!(cache.get("a").is_some());
        assert!(cache.get("d").is_some());
        let generations = cache.generations.lock().expect("lock");
        assert!(generations.young.len() + generations.old.len() <= 4);
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let cache = VerifiedTokens::new(0);
        cache.insert("a", claims("a"), "k");
        assert!(cache.get("a").is_none());
    }
}
