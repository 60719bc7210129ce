//! A slab that grows in fixed chunks (issue 11): connections and session slots live here.
//!
//! A `Vec<Option<T>>` doubles when full, so at 2^k + 1 entries it holds room for 2^(k+1) and,
//! while it grows, both the old and the new buffer; with records of a few hundred bytes that
//! slack is most of the memory per connection at some counts. Here a full slab adds one chunk
//! of [`CHUNK`] entries: the slack is at most one chunk, and growing copies nothing (entries
//! never move, only the small vector of chunk pointers doubles). The free list grows in chunks
//! too: a `Vec<u32>` of freed indexes doubling at a million entries copied 2 MB into 4 MB of
//! fresh pages inside one close or expiry (1-2 ms, `tests/timers.rs`).

use crate::ids::SlotId;

/// Entries per chunk.
pub(crate) const CHUNK: usize = 1024;

/// The index type of a slab: a `u32` or a newtype over one ([`SlotId`]).
pub(crate) trait Key: Copy {
    /// The key of index `i`.
    fn from_index(i: u32) -> Self;
    /// The index of this key.
    fn index(self) -> u32;
}

impl Key for u32 {
    fn from_index(i: u32) -> Self {
        i
    }
    fn index(self) -> u32 {
        self
    }
}

impl Key for SlotId {
    fn from_index(i: u32) -> Self {
        SlotId(i)
    }
    fn index(self) -> u32 {
        self.0
    }
}

/// Entries addressed by a `u32` index (or a [`Key`] over one), reused after removal (lowest
/// free first is not promised: the most recently freed index is reused first).
#[derive(Debug)]
pub(crate) struct Slab<T, K = u32> {
    chunks: Vec<Box<[Option<T>]>>,
    free: FreeList,
    /// Indexes ever handed out: `0..len` are valid to look up.
    len: u32,
    key: std::marker::PhantomData<K>,
}

impl<T, K> Default for Slab<T, K> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            free: FreeList::default(),
            len: 0,
            key: std::marker::PhantomData,
        }
    }
}

impl<T, K: Key> Slab<T, K> {
    /// The entry at `i`, if occupied.
    pub(crate) fn get(&self, i: K) -> Option<&T> {
        let i = i.index() as usize;
        self.chunks.get(i / CHUNK)?[i % CHUNK].as_ref()
    }

    /// The entry at `i`, if occupied.
    pub(crate) fn get_mut(&mut self, i: K) -> Option<&mut T> {
        let i = i.index() as usize;
        self.chunks.get_mut(i / CHUNK)?[i % CHUNK].as_mut()
    }

    /// Stores `value` in a free entry and returns its index.
    pub(crate) fn insert(&mut self, value: T) -> K {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = self.len;
                if i as usize == self.chunks.len() * CHUNK {
                    self.chunks.push((0..CHUNK).map(|_| None).collect());
                }
                self.len += 1;
                i
            }
        };
        let i_usize = i as usize;
        self.chunks[i_usize / CHUNK][i_usize % CHUNK] = Some(value);
        K::from_index(i)
    }

    /// Takes the entry at `i` out; its index is reused by a later insert.
    pub(crate) fn remove(&mut self, i: K) -> Option<T> {
        let i = i.index();
        let iu = i as usize;
        let v = self.chunks.get_mut(iu / CHUNK)?[iu % CHUNK].take()?;
        self.free.push(i);
        Some(v)
    }

    /// One past the highest index ever handed out.
    pub(crate) fn end(&self) -> u32 {
        self.len
    }

    /// The keys ever handed out (occupied or not), in index order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = K> {
        (0..self.len).map(K::from_index)
    }

    /// The occupied entries with their indexes, in index order (the simulation's and the
    /// fuzz body's invariants).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn entries(&self) -> impl Iterator<Item = (K, &T)> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .zip(0u32..)
            .filter_map(|(e, i)| Some((K::from_index(i), e.as_ref()?)))
    }

    /// The occupied entries, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|c| c.iter()).flatten()
    }
}

/// Freed indexes, most recent on top, in blocks of [`CHUNK`]: a push never copies the indexes
/// already held, and an emptied block is freed.
#[derive(Debug, Default)]
struct FreeList {
    blocks: Vec<Vec<u32>>,
}

impl FreeList {
    fn push(&mut self, i: u32) {
        match self.blocks.last_mut() {
            Some(top) if top.len() < CHUNK => top.push(i),
            _ => {
                let mut block = Vec::with_capacity(CHUNK);
                block.push(i);
                self.blocks.push(block);
            }
        }
    }

    fn pop(&mut self) -> Option<u32> {
        let top = self.blocks.last_mut()?;
        let i = top.pop();
        if top.is_empty() {
            self.blocks.pop();
        }
        i
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.blocks.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_one_chunk_and_reuses_freed_indexes() {
        let mut s: Slab<u64> = Slab::default();
        for i in 0..CHUNK as u64 {
            assert_eq!(s.insert(i), i as u32);
        }
        assert_eq!(s.chunks.len(), 1, "exactly one chunk for CHUNK entries");
        assert_eq!(s.insert(7), CHUNK as u32);
        assert_eq!(s.chunks.len(), 2, "one more chunk, not a doubling of every entry");
        assert_eq!(s.remove(3), Some(3));
        assert_eq!(s.get(3), None);
        assert_eq!(s.remove(3), None, "a free entry cannot be removed twice");
        assert_eq!(s.insert(42), 3, "the freed index is reused");
        assert_eq!(s.get(3), Some(&42));
        assert_eq!(s.get(u32::MAX), None);
        assert_eq!(s.iter().count(), CHUNK + 1);
        assert_eq!(s.end(), CHUNK as u32 + 1);
        assert_eq!(s.keys().count(), CHUNK + 1);
    }

    #[test]
    fn entries_never_move_when_it_grows() {
        let mut s: Slab<u32> = Slab::default();
        let first = s.insert(1);
        let before = std::ptr::from_ref(s.get(first).expect("inserted"));
        for i in 0..(3 * CHUNK) as u32 {
            s.insert(i);
        }
        let after = std::ptr::from_ref(s.get(first).expect("still there"));
        assert_eq!(before, after, "growing added chunks without moving the first one");
        assert_eq!(s.get(first), Some(&1));
    }

    #[test]
    fn the_free_list_grows_in_blocks_and_hands_back_every_index_once() {
        let n = 3 * CHUNK + 5;
        let mut s: Slab<u32> = Slab::default();
        let keys: Vec<u32> = (0..n as u32).map(|i| s.insert(i)).collect();
        let mut block_ptrs = Vec::new();
        for &k in &keys {
            assert_eq!(s.remove(k), Some(k));
            let top = s.free.blocks.last().expect("a block holds the freed index");
            assert!(top.capacity() == CHUNK, "blocks are allocated at their final size");
            if top.len() == 1 {
                block_ptrs.push(top.as_ptr());
            }
        }
        assert_eq!(s.free.len(), n);
        assert_eq!(s.free.blocks.len(), n.div_ceil(CHUNK), "one block per CHUNK freed indexes");
        // No block moved while later ones were added.
        let now: Vec<*const u32> = s.free.blocks.iter().map(|b| b.as_ptr()).collect();
        assert_eq!(now, block_ptrs, "earlier blocks were not copied");
        // Most recently freed first, each index exactly once, then fresh ones.
        let mut back: Vec<u32> = (0..n).map(|i| s.insert(i as u32)).collect();
        assert_eq!(back[0], keys[n - 1], "the last freed index is reused first");
        assert!(s.free.blocks.is_empty(), "emptied blocks are freed");
        back.sort_unstable();
        assert_eq!(back, keys, "every freed index handed back once");
        assert_eq!(s.insert(0), n as u32, "then the slab grows");
    }
}
