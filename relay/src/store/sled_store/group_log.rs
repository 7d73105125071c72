//! Group logs on sled (the `glog` and `glog_meta` trees; see the module docs of `sled_store`).

use subtle::ConstantTimeEq;

use super::{SledStore, backend, be_u64};
use crate::store::{GroupLogStore, LogAppend, LogCaps, LogPage, Result, StoreError};

/// A slot's `glog_meta` record: write check (32) ‖ head u64 ‖ bytes u64.
pub(super) struct Meta {
    check: [u8; 32],
    head: u64,
    pub(super) bytes: u64,
}

impl Meta {
    const LEN: usize = 48;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut v = [0u8; Self::LEN];
        let (check, rest) = v.split_at_mut(32);
        let (head, bytes) = rest.split_at_mut(8);
        check.copy_from_slice(&self.check);
        head.copy_from_slice(&self.head.to_be_bytes());
        bytes.copy_from_slice(&self.bytes.to_be_bytes());
        v
    }

    pub(super) fn decode(v: &[u8]) -> Result<Self> {
        let corrupt = || StoreError::Corrupt("glog_meta");
        if v.len() != Self::LEN {
            return Err(corrupt());
        }
        let (check, rest) = v.split_at_checked(32).ok_or_else(corrupt)?;
        let (head, bytes) = rest.split_at_checked(8).ok_or_else(corrupt)?;
        Ok(Self {
            check: check.try_into().map_err(|_| corrupt())?,
            head: be_u64(head, "glog_meta")?,
            bytes: be_u64(bytes, "glog_meta")?,
        })
    }
}

/// slot (32) ‖ entry number (u64 BE).
fn entry_key(slot: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    let (s, n) = k.split_at_mut(32);
    s.copy_from_slice(slot);
    n.copy_from_slice(&seq.to_be_bytes());
    k
}

impl GroupLogStore for SledStore {
    fn group_log_append(
        &self,
        slot: &[u8; 32],
        check: &[u8; 32],
        seq: u64,
        entry: &[u8],
        caps: &LogCaps,
    ) -> Result<LogAppend> {
        let mut total = self.log_lock()?;
        let meta = self
            .glog_meta
            .get(slot)
            .map_err(backend)?
            .map(|v| Meta::decode(&v))
            .transpose()?;
        let (head, bytes) = match &meta {
            Some(m) => {
                if !bool::from(m.check.ct_eq(check)) {
                    return Ok(LogAppend::Forbidden);
                }
                (m.head, m.bytes)
            }
            None => (0, 0),
        };
        if Some(seq) != head.checked_add(1) {
            return Ok(LogAppend::Conflict { head });
        }
        let len = entry.len() as u64;
        let bytes = bytes.saturating_add(len);
        if seq > caps.entries || bytes > caps.bytes {
            return Err(StoreError::GroupLogFull);
        }
        if total.saturating_add(len) > caps.total_bytes {
            return Err(StoreError::GroupLogsFull);
        }
        self.glog
            .insert(entry_key(slot, seq), entry)
            .map_err(backend)?;
        let meta = Meta {
            check: *check,
            head: seq,
            bytes,
        };
        self.glog_meta
            .insert(slot, &meta.encode()[..])
            .map_err(backend)?;
        *total = total.saturating_add(len);
        // Durable before anyone (the appender, a reader) can see it.
        self.sync()?;
        Ok(LogAppend::Appended)
    }

    fn group_log_read(
        &self,
        slot: &[u8; 32],
        from: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<LogPage> {
        let _held = self.log_lock()?;
        let Some(meta) = self.glog_meta.get(slot).map_err(backend)? else {
            return Ok(LogPage::default());
        };
        let head = Meta::decode(&meta)?.head;
        let mut page = LogPage {
            head,
            entries: Vec::new(),
        };
        let from = from.max(1);
        if from > head {
            return Ok(page);
        }
        let mut used = 0usize;
        let mut want = from;
        for item in self
            .glog
            .range(entry_key(slot, from)..=entry_key(slot, head))
        {
            let (k, v) = item.map_err(backend)?;
            let n = be_u64(k.get(32..).ok_or(StoreError::Corrupt("glog"))?, "glog")?;
            if n != want {
                return Err(StoreError::Corrupt("glog"));
            }
            if page.entries.len() >= max_entries
                || (!page.entries.is_empty() && used.saturating_add(v.len()) > max_bytes)
            {
                break;
            }
            used = used.saturating_add(v.len());
            page.entries.push((n, v.to_vec()));
            want = want.saturating_add(1);
        }
        Ok(page)
    }

    fn group_log_bytes(&self) -> Result<u64> {
        Ok(*self.log_lock()?)
    }
}
