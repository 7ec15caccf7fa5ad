//! A sorted set in one small allocation, for the view's indexes.
//!
//! The view keeps, per Kubernetes Service, the slices it has, the table
//! keys it produced, and per address the Services that use it: almost
//! always one of each. A `BTreeSet` of one allocates a whole node (11
//! slots, about 300 bytes with a `String`); at 100,000 Services the four
//! indexes held about 100 MB that way. A sorted `Vec` holds one in its
//! own size, and these sets are too small for its linear inserts to
//! matter.

use std::borrow::Borrow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmallSet<T>(Vec<T>);

impl<T> Default for SmallSet<T> {
    fn default() -> Self {
        SmallSet(Vec::new())
    }
}

impl<T: Ord> SmallSet<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`; whether it was not there.
    pub fn insert(&mut self, value: T) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, value);
                // Grown one at a time: no room kept beyond what is held.
                self.0.shrink_to_fit();
                true
            }
        }
    }

    /// Removes `value`; whether it was there.
    pub fn remove<Q: Ord + ?Sized>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        match self.0.binary_search_by(|x| x.borrow().cmp(value)) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains<Q: Ord + ?Sized>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.0.binary_search_by(|x| x.borrow().cmp(value)).is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// In order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// What `self` holds and `other` does not, in order.
    pub fn difference<'a>(&'a self, other: &'a SmallSet<T>) -> impl Iterator<Item = &'a T> {
        self.0.iter().filter(|x| !other.contains(*x))
    }
}

impl<T: Ord> FromIterator<T> for SmallSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut v: Vec<T> = iter.into_iter().collect();
        v.sort();
        v.dedup();
        v.shrink_to_fit();
        SmallSet(v)
    }
}

impl<'a, T> IntoIterator for &'a SmallSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_set_is_a_sorted_set() {
        let mut s = SmallSet::new();
        assert!(s.insert("b".to_owned()));
        assert!(s.insert("a".to_owned()));
        assert!(!s.insert("b".to_owned()));
        assert_eq!(s.iter().map(String::as_str).collect::<Vec<_>>(), ["a", "b"]);
        assert!(s.contains("a") && !s.contains("c"));
        assert!(!s.remove("c"));
        assert!(s.remove("a"));
        assert_eq!(s.len(), 1);
        let other: SmallSet<String> = ["b", "c", "b"].iter().map(|x| (*x).to_owned()).collect();
        assert_eq!(other.len(), 2);
        assert_eq!(other.difference(&s).collect::<Vec<_>>(), ["c"]);
        assert!(s.remove("b") && s.is_empty());
    }
}
