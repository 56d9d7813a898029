//! The host-side page allocator: sequences, their block tables, forks and copy-on-write, and
//! rollback (truncation, keeping an accepted path of a verified draft tree).

#[cfg(doc)]
use super::PagedKvCache;
use super::{check_page_size, OP};
use crate::error::{Error, Result};

/// A sequence of a [`PageTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId(pub u32);

/// Copy page `src` to page `dst` (in every layer's cache) before the step's writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageCopy {
    /// Source page.
    pub src: u32,
    /// Destination page.
    pub dst: u32,
}

/// Move the K/V rows of cache slot `src` (page * page_size + token) to slot `dst`, in every
/// layer's cache ([`PagedKvCache::copy_slots`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotCopy {
    /// Source slot.
    pub src: u32,
    /// Destination slot.
    pub dst: u32,
}

/// What every layer's cache applies after [`PageTable::keep_path`], in this order: the
/// copy-on-write page copies ([`PagedKvCache::copy_pages`]), then the row moves
/// ([`PagedKvCache::copy_slots`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptPath {
    /// Shared pages the moves write into, copied to pages of the sequence's own first.
    pub pages: Vec<PageCopy>,
    /// The accepted rows, each moved to its place (rows already in place are left out).
    pub rows: Vec<SlotCopy>,
}

#[derive(Clone, Debug, Default)]
struct SeqPages {
    pages: Vec<u32>,
    len: usize,
}

/// Host-side page allocator and block tables (see the module docs).
#[derive(Clone, Debug)]
pub struct PageTable {
    page_size: usize,
    free: Vec<u32>,
    refs: Vec<u32>,
    seqs: Vec<Option<SeqPages>>,
}

impl PageTable {
    /// A table over `n_pages` pages of `page_size` tokens, all free.
    pub fn new(n_pages: usize, page_size: usize) -> Result<Self> {
        check_page_size(page_size)?;
        crate::ensure!(
            n_pages > 0 && (n_pages as u64) * (page_size as u64) < u32::MAX as u64,
            Param,
            OP,
            "n_pages {n_pages} must be > 0 with n_pages x page_size {page_size} below 2^32 slots"
        );
        Ok(PageTable {
            page_size,
            // Popped from the back: page 0 is handed out first.
            free: (0..n_pages as u32).rev().collect(),
            refs: vec![0; n_pages],
            seqs: Vec::new(),
        })
    }

    /// Tokens per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }
    /// Pages in the pool.
    pub fn n_pages(&self) -> usize {
        self.refs.len()
    }
    /// Pages no sequence holds.
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// A new, empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = match self.seqs.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.seqs.push(None);
                self.seqs.len() - 1
            }
        };
        self.seqs[id] = Some(SeqPages::default());
        SeqId(id as u32)
    }

    fn seq(&self, id: SeqId) -> Result<&SeqPages> {
        self.seqs
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::param(OP, format!("no sequence {}", id.0)))
    }

    /// A new sequence sharing every page (and the length) of `parent`: a shared prompt prefix.
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let s = self.seq(parent)?.clone();
        for &p in &s.pages {
            self.refs[p as usize] += 1;
        }
        let id = self.add_sequence();
        self.seqs[id.0 as usize] = Some(s);
        Ok(id)
    }

    /// Drop a sequence; pages no other sequence shares become free.
    pub fn remove(&mut self, id: SeqId) -> Result<()> {
        let s = self.seq(id)?.clone();
        for &p in s.pages.iter().rev() {
            self.refs[p as usize] -= 1;
            if self.refs[p as usize] == 0 {
                self.free.push(p);
            }
        }
        self.seqs[id.0 as usize] = None;
        Ok(())
    }

    /// Tokens a sequence holds.
    pub fn len(&self, id: SeqId) -> Result<usize> {
        Ok(self.seq(id)?.len)
    }

    /// Whether a sequence holds no tokens.
    pub fn is_empty(&self, id: SeqId) -> Result<bool> {
        Ok(self.seq(id)?.len == 0)
    }

    /// A sequence's pages, in token order (its block-table row).
    pub fn pages(&self, id: SeqId) -> Result<&[u32]> {
        Ok(&self.seq(id)?.pages)
    }

    /// Roll a sequence back to its first `len` tokens (rejected draft tokens): the pages past
    /// them are released, and those no other sequence shares become free. A kept, partly filled
    /// last page that another sequence shares stays shared; the next [`PageTable::append`] copies
    /// it before writing (copy-on-write), so the other sequence's rows are never touched.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let have = self.seq(id)?.len;
        crate::ensure!(
            len <= have,
            Param,
            OP,
            "truncate: sequence {} holds {have} tokens; it cannot be truncated to {len}",
            id.0
        );
        let keep = len.div_ceil(self.page_size);
        let s = self.seqs[id.0 as usize].as_mut().expect("checked above");
        for p in s.pages.drain(keep..).rev() {
            self.refs[p as usize] -= 1;
            if self.refs[p as usize] == 0 {
                self.free.push(p);
            }
        }
        s.len = len;
        Ok(())
    }

    /// Keep one accepted path of a draft tree: the tree's tokens sit at positions `base ..` of
    /// the sequence (one prefill chunk), and `accepted` lists the offsets (from `base`, strictly
    /// increasing) of the tokens to keep. Token `base + accepted[i]` moves to position `base + i`
    /// and the sequence is truncated to `base + accepted.len()`. Returns what every layer's
    /// cache applies ([`KeptPath`]): a page the moves write into that another sequence shares
    /// is first copied to a free page of this sequence's own (copy-on-write; `Err` when none is
    /// free, and then nothing changes). For a chain of drafts, where the accepted tokens are a
    /// prefix, nothing moves and this is [`PageTable::truncate`].
    pub fn keep_path(&mut self, id: SeqId, base: usize, accepted: &[usize]) -> Result<KeptPath> {
        let have = self.seq(id)?.len;
        crate::ensure!(
            base <= have,
            Param,
            OP,
            "keep_path: base {base} is past the {have} tokens of sequence {}",
            id.0
        );
        for (i, &a) in accepted.iter().enumerate() {
            crate::ensure!(
                i == 0 || a > accepted[i - 1],
                Param,
                OP,
                "keep_path: accepted offsets must increase strictly, got {accepted:?}"
            );
            crate::ensure!(
                base + a < have,
                Param,
                OP,
                "keep_path: accepted offset {a} is past the {} tree tokens of sequence {} (base {base}, {have} tokens)",
                have - base,
                id.0
            );
        }
        let ps = self.page_size;
        let moves: Vec<(usize, usize)> = accepted
            .iter()
            .enumerate()
            .map(|(i, &a)| (base + a, base + i))
            .filter(|(src, dst)| src != dst)
            .collect();
        // Destination pages another sequence shares, each copied once.
        let pages = &self.seq(id)?.pages;
        let mut shared: Vec<usize> = moves
            .iter()
            .map(|&(_, dst)| dst / ps)
            .filter(|&pi| self.refs[pages[pi] as usize] > 1)
            .collect();
        shared.dedup();
        crate::ensure!(
            shared.len() <= self.free.len(),
            Limit,
            OP,
            "out of pages: keeping the path copies {} shared pages, {} are free",
            shared.len(),
            self.free.len()
        );
        let mut kept = KeptPath::default();
        let s = self.seqs[id.0 as usize].as_mut().expect("checked above");
        for pi in shared {
            let src = s.pages[pi];
            let dst = self.free.pop().expect("counted above");
            self.refs[src as usize] -= 1;
            self.refs[dst as usize] = 1;
            s.pages[pi] = dst;
            kept.pages.push(PageCopy { src, dst });
        }
        let slot = |t: usize| (s.pages[t / ps] as usize * ps + t % ps) as u32;
        kept.rows = moves
            .iter()
            .map(|&(src, dst)| SlotCopy {
                src: slot(src),
                dst: slot(dst),
            })
            .collect();
        self.truncate(id, base + accepted.len())?;
        Ok(kept)
    }

    /// Make room for `n_new` more tokens in each listed sequence (each listed once): allocate the
    /// pages they need, copy-on-write a shared, partly filled last page, and advance the
    /// lengths. Returns the page copies every layer's cache must apply
    /// ([`PagedKvCache::copy_pages`]) before this step's writes. All or nothing: when the pool
    /// cannot supply every page, nothing changes and the error names the first sequence short.
    pub fn append(&mut self, new: &[(SeqId, usize)]) -> Result<Vec<PageCopy>> {
        let ps = self.page_size;
        let mut need = 0usize;
        let mut first_short = None;
        for (i, &(id, n)) in new.iter().enumerate() {
            let s = self.seq(id)?;
            crate::ensure!(
                new[..i].iter().all(|&(o, _)| o != id),
                Param,
                OP,
                "sequence {} listed twice in one step",
                id.0
            );
            crate::ensure!(
                (s.len as u64 + n as u64) * 2 < i32::MAX as u64,
                Limit,
                OP,
                "sequence {} would hold {} tokens, past 2^30 positions",
                id.0,
                s.len + n
            );
            if n == 0 {
                continue;
            }
            let cow = !s.len.is_multiple_of(ps) && self.refs[*s.pages.last().unwrap() as usize] > 1;
            need += (s.len + n).div_ceil(ps) - s.pages.len() + cow as usize;
            if need > self.free.len() && first_short.is_none() {
                first_short = Some(id);
            }
        }
        if let Some(id) = first_short {
            return Err(Error::limit(
                OP,
                format!(
                    "out of pages: the step needs {need} new pages, {} are free (sequence {} is the first that cannot grow)",
                    self.free.len(),
                    id.0
                ),
            ));
        }
        let mut copies = Vec::new();
        for &(id, n) in new {
            if n == 0 {
                continue;
            }
            let mut s = self.seqs[id.0 as usize].take().unwrap();
            if !s.len.is_multiple_of(ps) {
                let last = *s.pages.last().unwrap();
                if self.refs[last as usize] > 1 {
                    let dst = self.free.pop().unwrap();
                    self.refs[last as usize] -= 1;
                    self.refs[dst as usize] = 1;
                    *s.pages.last_mut().unwrap() = dst;
                    copies.push(PageCopy { src: last, dst });
                }
            }
            while s.pages.len() < (s.len + n).div_ceil(ps) {
                let p = self.free.pop().unwrap();
                self.refs[p as usize] = 1;
                s.pages.push(p);
            }
            s.len += n;
            self.seqs[id.0 as usize] = Some(s);
        }
        Ok(copies)
    }
}
