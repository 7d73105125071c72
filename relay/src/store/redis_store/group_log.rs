//! Group logs on the Redis Cluster: one hash tag per slot, the append one script
//! ([`super::scripts::GROUP_LOG_APPEND`]), a read one script ([`super::scripts::GROUP_LOG_READ`]).

use redis::Value;

use super::{RedisStore, array, bytes, uint};
use crate::store::{GroupLogStore, LogAppend, LogCaps, LogPage, Result, StoreError};

fn corrupt() -> StoreError {
    StoreError::Corrupt("group log answer")
}

impl RedisStore {
    /// `<prefix>{gl:<hex slot>}`: the start of the keys of one group log.
    fn log_key(&self, slot: &[u8; 32]) -> String {
        self.redis.tagged(&format!("gl:{}", hex::encode(slot)))
    }

    /// The counter of the bytes of all group logs.
    fn log_total_key(&self) -> String {
        format!("{}:glb", self.redis.tagged("g"))
    }
}

impl GroupLogStore for RedisStore {
    fn group_log_append(
        &self,
        slot: &[u8; 32],
        check: &[u8; 32],
        seq: u64,
        entry: &[u8],
        caps: &LogCaps,
    ) -> Result<LogAppend> {
        let total = self.group_log_bytes()?;
        let answer = self.redis.eval(
            &self.scripts.log_append,
            self.log_key(slot),
            vec![
                check.to_vec(),
                seq.to_string().into_bytes(),
                entry.to_vec(),
                caps.entries.to_string().into_bytes(),
                caps.bytes.to_string().into_bytes(),
                total.to_string().into_bytes(),
                caps.total_bytes.to_string().into_bytes(),
            ],
        )?;
        let mut it = array(answer)?.into_iter();
        let status = bytes(it.next().ok_or_else(corrupt)?)?;
        let head = uint(&it.next().ok_or_else(corrupt)?)?;
        match status.as_slice() {
            b"ok" => {
                // The relay-wide count: a failure here leaves it low until the next append.
                let counted: Result<i64> = self.redis.write_plain(
                    redis::cmd("INCRBY")
                        .arg(self.log_total_key())
                        .arg(entry.len())
                        .clone(),
                );
                if let Err(e) = counted {
                    tracing::warn!(error = %e, "relay-wide group log count not updated");
                }
                Ok(LogAppend::Appended)
            }
            b"F" => Ok(LogAppend::Forbidden),
            b"C" => Ok(LogAppend::Conflict { head }),
            b"L" => Err(StoreError::GroupLogFull),
            b"R" => Err(StoreError::GroupLogsFull),
            _ => Err(corrupt()),
        }
    }

    fn group_log_read(
        &self,
        slot: &[u8; 32],
        from: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<LogPage> {
        let from = from.max(1);
        let answer = self.redis.eval_plain(
            &self.scripts.log_read,
            self.log_key(slot),
            vec![
                from.to_string().into_bytes(),
                max_entries.to_string().into_bytes(),
                max_bytes.to_string().into_bytes(),
            ],
        )?;
        let mut it = array(answer)?.into_iter();
        let head = uint(&it.next().ok_or_else(corrupt)?)?;
        let mut entries = Vec::new();
        let mut seq = from;
        for v in it {
            if let Value::Nil = v {
                return Err(StoreError::Corrupt("group log entry"));
            }
            entries.push((seq, bytes(v)?));
            seq = seq.saturating_add(1);
        }
        Ok(LogPage { head, entries })
    }

    fn group_log_bytes(&self) -> Result<u64> {
        let total: Option<i64> = self
            .redis
            .read(redis::cmd("GET").arg(self.log_total_key()).clone())?;
        Ok(total.and_then(|t| u64::try_from(t).ok()).unwrap_or(0))
    }
}
