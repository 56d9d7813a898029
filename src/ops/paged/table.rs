//! The host-side page allocator: sequences, their block tables, forks and copy-on-write.

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
