//! Group logs (RELAY_PROTOCOL.md §15): ordered, opaque logs under slots the relay cannot tie to
//! a group, appended to by compare-and-swap on the entry number. Allowed on authenticated and
//! anonymous connections; rate-limited per device or per anonymous address block. Nothing here
//! logs a slot, a token or an entry.

use std::sync::Arc;

use hush_proto::relay_api::{self as api, ErrorCode, server_frame};
use sha2::{Digest, Sha256};

use super::{ConnState, Now, Refusal, Reply, arr};
use crate::limits;
use crate::shared::Relay;
use crate::store::{LogAppend, LogCaps};

/// The write check the relay keeps for a write token: `SHA-256(label ‖ token)`.
pub(crate) fn write_check(token: &[u8; limits::GROUP_LOG_TOKEN_LEN]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(limits::GROUP_LOG_WRITE_LABEL);
    h.update(token);
    h.finalize().into()
}

impl ConnState {
    /// `GroupLogAppend`: checked here (sizes, rate), then written by the store writer, whose
    /// store call makes the compare-and-swap; answered once durable. A barrier, so that a read
    /// pipelined after it on this connection sees it.
    pub(super) fn group_log_append(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        a: api::GroupLogAppend,
        now: Now,
    ) -> Result<Reply, Refusal> {
        let caller = self.caller(relay)?;
        relay.rate_limiters.group_log_append(&caller, now.at)?;
        let slot = arr::<{ limits::GROUP_LOG_SLOT_LEN }>(&a.slot, "a group log slot")?;
        let token = arr::<{ limits::GROUP_LOG_TOKEN_LEN }>(&a.write_token, "a write token")?;
        if a.seq == 0 {
            return Err(Refusal::new(
                ErrorCode::Malformed,
                "group log entries are numbered from 1",
            ));
        }
        if a.entry.is_empty() {
            return Err(Refusal::new(
                ErrorCode::Malformed,
                "a group log entry is never empty",
            ));
        }
        if a.entry.len() > limits::GROUP_LOG_ENTRY_MAX {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!(
                    "a group log entry is at most {} bytes",
                    limits::GROUP_LOG_ENTRY_MAX
                ),
            ));
        }
        let check = write_check(&token);
        let caps = LogCaps {
            entries: limits::GROUP_LOG_MAX_ENTRIES,
            bytes: limits::GROUP_LOG_MAX_BYTES,
            total_bytes: relay.cfg.group_log_total_max_bytes,
        };
        let (seq, entry) = (a.seq, a.entry);
        self.submit(relay, rid, true, move |r| {
            match r
                .store
                .group_log_append(&slot, &check, seq, &entry, &caps)?
            {
                LogAppend::Appended => {
                    r.metrics.group_log_appends.inc();
                    if let Ok(bytes) = r.store.group_log_bytes() {
                        r.metrics
                            .group_log_bytes
                            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                    }
                    Ok(server_frame::Kind::GroupLogAppended(
                        api::GroupLogAppended { seq },
                    ))
                }
                LogAppend::Conflict { head } => {
                    r.metrics.group_log_conflicts.inc();
                    let mut refused = Refusal::new(
                        ErrorCode::LogConflict,
                        format!("entry {seq} is not the next one: the log's head is {head}"),
                    );
                    refused.log_head = head;
                    Err(refused)
                }
                LogAppend::Forbidden => Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "the write token does not match the group log's",
                )),
            }
        });
        Ok(Reply::Later)
    }

    /// `GroupLogRead`: the head and a page of entries, read at once. An unknown slot reads as
    /// an empty log.
    pub(super) fn group_log_read(
        &mut self,
        relay: &Relay,
        q: &api::GroupLogRead,
        now: Now,
    ) -> Result<server_frame::Kind, Refusal> {
        let caller = self.caller(relay)?;
        relay.rate_limiters.group_log_read(&caller, now.at)?;
        let slot = arr::<{ limits::GROUP_LOG_SLOT_LEN }>(&q.slot, "a group log slot")?;
        let max = usize::try_from(q.max_entries).unwrap_or(usize::MAX);
        let max = if max == 0 {
            limits::GROUP_LOG_READ_MAX_ENTRIES
        } else {
            max.min(limits::GROUP_LOG_READ_MAX_ENTRIES)
        };
        let page = relay.store.group_log_read(
            &slot,
            q.from_seq.max(1),
            max,
            limits::GROUP_LOG_READ_MAX_BYTES,
        )?;
        relay.metrics.group_log_reads.inc();
        Ok(server_frame::Kind::GroupLogEntries(api::GroupLogEntries {
            head: page.head,
            entries: page
                .entries
                .into_iter()
                .map(|(seq, entry)| api::GroupLogEntry { seq, entry })
                .collect(),
        }))
    }
}
