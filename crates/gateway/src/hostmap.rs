//! A map keyed by hostname in which a wildcard key `*.apps.test` also answers for every name
//! exactly one label below `apps.test` (`a.apps.test`; not `apps.test`, not `x.a.apps.test`),
//! and an exact key always wins over the wildcard. The route table and the certificate store
//! both use it, so a wildcard tunnel is routed and served over TLS like an exact one.
//!
//! Wildcards live in a second map keyed by their parent (`apps.test`), so a lookup never
//! allocates: an exact hit costs one hash lookup as before, a miss one more with a borrowed
//! suffix of the host, and nothing at all when no wildcard is configured.

use std::collections::HashMap;

/// Hostname → value, with one-label wildcards; keys and looked-up hosts are already normalised
/// (lower case, no trailing dot: see [`crate::proxy::routes::normalize_host`]).
#[derive(Debug)]
pub struct HostMap<V> {
    exact: HashMap<String, V>,
    /// `*.apps.test` is stored under `apps.test`.
    wildcards: HashMap<String, V>,
}

impl<V> Default for HostMap<V> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcards: HashMap::new(),
        }
    }
}

impl<V> HostMap<V> {
    /// The value for `host`: its exact entry, else the wildcard one label up.
    pub fn get(&self, host: &str) -> Option<&V> {
        if let Some(value) = self.exact.get(host) {
            return Some(value);
        }
        if self.wildcards.is_empty() {
            return None;
        }
        match host.split_once('.') {
            // A literal `*` label is a request for the wildcard's own name, which serves nothing.
            Some((first, parent)) if !first.is_empty() && first != "*" => {
                self.wildcards.get(parent)
            }
            _ => None,
        }
    }

    pub fn contains(&self, host: &str) -> bool {
        self.get(host).is_some()
    }

    /// Every value, exact and wildcard.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.exact.values().chain(self.wildcards.values())
    }

    /// Number of keys, wildcards included.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V> FromIterator<(String, V)> for HostMap<V> {
    /// Keys `*.parent` become wildcards; every other key is exact.
    fn from_iter<I: IntoIterator<Item = (String, V)>>(entries: I) -> Self {
        let mut map = Self::default();
        for (host, value) in entries {
            match host.strip_prefix("*.") {
                Some(parent) if !parent.is_empty() => {
                    map.wildcards.insert(parent.to_string(), value);
                }
                _ => {
                    map.exact.insert(host, value);
                }
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(keys: &[(&str, u8)]) -> HostMap<u8> {
        keys.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label_and_exact_names_win() {
        let m = map(&[("*.apps.test", 1), ("a.apps.test", 2), ("other.test", 3)]);
        assert_eq!(m.get("a.apps.test"), Some(&2), "exact wins");
        assert_eq!(m.get("b.apps.test"), Some(&1));
        assert_eq!(m.get("xn--bcher-kva.apps.test"), Some(&1));
        assert_eq!(m.get("apps.test"), None, "not the parent itself");
        assert_eq!(m.get("x.a.apps.test"), None, "one label only");
        assert_eq!(m.get("x.b.apps.test"), None);
        assert_eq!(m.get("*.apps.test"), None, "the wildcard's own name");
        assert_eq!(m.get(".apps.test"), None);
        assert_eq!(m.get("other.test"), Some(&3));
        assert_eq!(m.get("a.other.test"), None);
        assert_eq!(m.get(""), None);
        assert_eq!(m.len(), 3);
        assert_eq!(m.values().count(), 3);
        assert!(m.contains("zz.apps.test"));
    }

    #[test]
    fn nested_wildcards_are_independent() {
        let m = map(&[("*.apps.test", 1), ("*.a.apps.test", 2)]);
        assert_eq!(m.get("a.apps.test"), Some(&1));
        assert_eq!(m.get("x.a.apps.test"), Some(&2));
        assert_eq!(m.get("y.x.a.apps.test"), None);
    }

    #[test]
    fn without_wildcards_only_exact_names_match() {
        let m = map(&[("a.test", 1)]);
        assert_eq!(m.get("a.test"), Some(&1));
        assert_eq!(m.get("b.a.test"), None);
        assert!(HostMap::<u8>::default().is_empty());
    }
}
