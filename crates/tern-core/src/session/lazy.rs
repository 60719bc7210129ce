//! Maps and sets that hold no table and almost no inline space while empty (issue 11).
//!
//! A `HashMap` is 48 bytes inline even when empty (its table pointer, lengths and the hasher's
//! keys). A session keeps three of them, and an idle session has nothing in any: at a million
//! sessions that is 144 MB for empty maps. [`LazyMap`] and [`LazySet`] are one pointer while
//! empty; the map is allocated on the first insert and freed when the last entry leaves, so
//! an idle session holds none. The methods mirror the standard ones the session code uses.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// A `HashMap` allocated only while it holds an entry.
// The box is the point: one pointer inline instead of the map's 48 bytes while empty.
#[allow(clippy::box_collection)]
#[derive(Debug, Clone)]
pub struct LazyMap<K, V>(Option<Box<HashMap<K, V>>>);

impl<K, V> Default for LazyMap<K, V> {
    fn default() -> Self {
        Self(None)
    }
}

impl<K: Eq + Hash, V> LazyMap<K, V> {
    /// An empty map (no allocation).
    pub const fn new() -> Self {
        Self(None)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    /// Whether no entry is held (then nothing is allocated).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the map has its table allocated (only while it holds an entry).
    pub fn is_allocated(&self) -> bool {
        self.0.is_some()
    }

    /// The value for `k`.
    pub fn get<Q: Eq + Hash + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.0.as_ref()?.get(k)
    }

    /// The value for `k`, mutably.
    pub fn get_mut<Q: Eq + Hash + ?Sized>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.0.as_mut()?.get_mut(k)
    }

    /// Whether `k` has a value.
    pub fn contains_key<Q: Eq + Hash + ?Sized>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(k).is_some()
    }

    /// Inserts, allocating the map on the first entry; returns the value replaced.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.0.get_or_insert_with(Box::default).insert(k, v)
    }

    /// Removes `k`, freeing the map when it was the last entry.
    pub fn remove<Q: Eq + Hash + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let m = self.0.as_mut()?;
        let v = m.remove(k);
        self.release_if_empty();
        v
    }

    /// Keeps the entries `f` accepts, freeing the map if none is left.
    pub fn retain(&mut self, f: impl FnMut(&K, &mut V) -> bool) {
        if let Some(m) = self.0.as_mut() {
            m.retain(f);
        }
        self.release_if_empty();
    }

    /// Removes every entry and frees the map.
    pub fn clear(&mut self) {
        self.0 = None;
    }

    /// The entries, in the map's order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().flat_map(|m| m.iter())
    }

    /// The entries, values mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.0.iter_mut().flat_map(|m| m.iter_mut())
    }

    /// The keys.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// The values.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// The values, mutable.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.iter_mut().map(|(_, v)| v)
    }

    fn release_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(|m| m.is_empty()) {
            self.0 = None;
        }
    }
}

impl<K: Eq + Hash, V> FromIterator<(K, V)> for LazyMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let m: HashMap<K, V> = iter.into_iter().collect();
        if m.is_empty() {
            Self(None)
        } else {
            Self(Some(Box::new(m)))
        }
    }
}

impl<K, V> IntoIterator for LazyMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::iter::Flatten<std::option::IntoIter<HashMap<K, V>>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.map(|b| *b).into_iter().flatten()
    }
}

impl<'a, K, V> IntoIterator for &'a LazyMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::FlatMap<
        std::option::Iter<'a, Box<HashMap<K, V>>>,
        std::collections::hash_map::Iter<'a, K, V>,
        fn(&'a Box<HashMap<K, V>>) -> std::collections::hash_map::Iter<'a, K, V>,
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().flat_map(|m| m.iter())
    }
}

/// A `HashSet`, allocated only while it holds an element (a [`LazyMap`] to `()`).
#[derive(Debug, Clone)]
pub struct LazySet<T>(LazyMap<T, ()>);

impl<T> Default for LazySet<T> {
    fn default() -> Self {
        Self(LazyMap::default())
    }
}

impl<T: Eq + Hash> LazySet<T> {
    /// An empty set (no allocation).
    pub const fn new() -> Self {
        Self(LazyMap::new())
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no element is held (then nothing is allocated).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the set has its table allocated (only while it holds an element).
    pub fn is_allocated(&self) -> bool {
        self.0.is_allocated()
    }

    /// Whether `v` is in the set.
    pub fn contains<Q: Eq + Hash + ?Sized>(&self, v: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.0.contains_key(v)
    }

    /// Adds `v`; false if it was there already.
    pub fn insert(&mut self, v: T) -> bool {
        self.0.insert(v, ()).is_none()
    }

    /// Removes `v`, freeing the set when it was the last; false if it was not there.
    pub fn remove<Q: Eq + Hash + ?Sized>(&mut self, v: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.0.remove(v).is_some()
    }

    /// The elements.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.keys()
    }
}

impl<T: Eq + Hash> FromIterator<T> for LazySet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self(iter.into_iter().map(|v| (v, ())).collect())
    }
}

impl<T> IntoIterator for LazySet<T> {
    type Item = T;
    type IntoIter =
        std::iter::Map<std::iter::Flatten<std::option::IntoIter<HashMap<T, ()>>>, fn((T, ())) -> T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().map(|(v, ())| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocated_only_while_holding_entries() {
        assert_eq!(std::mem::size_of::<LazyMap<u16, u64>>(), std::mem::size_of::<usize>());
        let mut m: LazyMap<u16, u64> = LazyMap::new();
        assert!(!m.is_allocated());
        assert_eq!(m.insert(1, 10), None);
        assert_eq!(m.insert(2, 20), None);
        assert!(m.is_allocated());
        assert_eq!(m.get(&1), Some(&10));
        assert_eq!(m.remove(&1), Some(10));
        assert!(m.is_allocated(), "one entry left");
        assert_eq!(m.remove(&3), None);
        assert_eq!(m.remove(&2), Some(20));
        assert!(!m.is_allocated(), "freed with its last entry");
        m.insert(4, 40);
        m.retain(|_, _| false);
        assert!(!m.is_allocated(), "freed when retain empties it");
        let m: LazyMap<u16, u64> = std::iter::empty().collect();
        assert!(!m.is_allocated(), "collecting nothing allocates nothing");
    }

    #[test]
    fn set_frees_with_its_last_element() {
        let mut s: LazySet<u16> = LazySet::new();
        assert!(s.insert(7));
        assert!(!s.insert(7));
        assert!(s.contains(&7));
        assert_eq!(s.len(), 1);
        assert!(s.remove(&7));
        assert!(!s.remove(&7));
        assert!(!s.is_allocated());
        let s: LazySet<u16> = [1, 2].into_iter().collect();
        let mut v: Vec<u16> = s.into_iter().collect();
        v.sort_unstable();
        assert_eq!(v, [1, 2]);
    }
}
