//! The persistent, encrypted-at-rest [`KvStore`] of `hush-core`, on [sled](https://docs.rs/sled).
//!
//! A crate of its own so that the protocol core does not depend on a database: `hush-core`
//! defines the [`KvStore`] contract and its backend-independent test-suite
//! (`hush_core::kv_store_suite!`, feature `store-suite`), which this crate's tests run.
//!
//! # Keys
//!
//! The application supplies one 32-byte at-rest key `K`. Three subkeys are derived from it with
//! HKDF-SHA256 (RFC 5869, no salt — i.e. 32 zero bytes — and IKM = `K`), 32 bytes each:
//!
//! ```text
//! index_key = HKDF-SHA256(salt = none, ikm = K, info = "Hush-Store-Index-v1" || label, L = 32)
//! value_key = HKDF-SHA256(salt = none, ikm = K, info = "Hush-Store-Value-v1" || label, L = 32)
//! state_key = HKDF-SHA256(salt = none, ikm = K, info = "Hush-Store-State-v1" || label, L = 32)
//! ```
//!
//! `label` names the store ([`SledKv::open_labelled`]; the client uses `"/db"` for the device
//! store and `"/history"` for the message history), so two stores of one profile under the same
//! `K` never share a subkey: a record copied from one store into the other does not
//! authenticate. [`SledKv::open`] uses the empty label (the format before labels existed).
//!
//! **Migration.** A labelled open of a store whose key-check record authenticates only under the
//! empty label (a store written before labels) re-encrypts every record under the labelled
//! subkeys in one atomic sled batch (old entries removed, new ones inserted, new key-check
//! record), flushed before the open returns. A crash before the flush leaves the old store,
//! which the next open migrates again.
//!
//! # Records
//!
//! Everything lives in sled's default tree, so one `sled::Batch` is atomic across namespaces.
//! A logical record `(ns, logical_key, value)` is stored as one sled entry:
//!
//! ```text
//! physical_key   = ns_byte || HMAC-SHA256(index_key, ns_byte || logical_key)      (33 bytes)
//! plaintext      = u32_be(len(logical_key)) || logical_key || value
//! physical_value = u64_be(version) || nonce (24 random bytes)
//!                  || XChaCha20-Poly1305(value_key, nonce, plaintext,
//!                                        aad = physical_key || u64_be(version))
//!                     (ciphertext, same length as plaintext, then the 16-byte Poly1305 tag)
//! ```
//!
//! `version` is the number of the commit that wrote the record (see *Rollback* below).
//!
//! `ns_byte` is [`Namespace::as_byte`]. Logical key names never appear on disk (the index is a
//! keyed hash), so the database does not reveal, e.g., whom a device talks to; only the namespace
//! of each record, the number of records and their sizes are visible. Binding the physical key as
//! AAD means a value moved to another physical key (or another namespace) fails authentication.
//! On read the embedded logical key is also checked against the one requested (for `get`) or
//! against the physical key (for `scan`).
//!
//! `scan(ns)` iterates the physical keys that start with `ns_byte`, decrypts each record and
//! returns the logical `(key, value)` pairs sorted by logical key. Any record that is too short,
//! fails authentication or is malformed makes `get`/`scan` fail with [`StoreError::Corrupt`].
//!
//! # Key check
//!
//! A key-check record lives in the [`Namespace::Meta`] prefix at the one-byte physical key
//! `0x00` (no HMAC, so it can be found without the right key and can never collide with a
//! 33-byte record key):
//!
//! ```text
//! physical_key   = 0x00
//! plaintext      = u32_be(9) || "key-check" || "Hush-Store-Key-Check-v1"
//! physical_value = nonce (24) || XChaCha20-Poly1305(value_key, nonce, plaintext, aad = 0x00)
//! ```
//!
//! It is written (and flushed) when a store is opened on an empty database. On every later open
//! it must decrypt to exactly that plaintext, otherwise [`SledKv::open`] fails with
//! [`StoreError::WrongKey`]. A non-empty database without the record fails with
//! [`StoreError::Corrupt`]. The record is invisible through the [`KvStore`] API.
//!
//! # Rollback
//!
//! Every commit has a number, one more than the last (a new store's first state is commit 1).
//! Each record carries the number of the commit that wrote it (its `version`, bound into its
//! AAD, so it cannot be changed without the record failing authentication). A state record at
//! the physical key `0x00 0x01` (in the `Meta` prefix; never a 33-byte record key) holds the
//! store-wide commit counter and a digest of every record:
//!
//! ```text
//! digest         = XOR over every record r of HMAC-SHA256(state_key, r.physical_key || u64_be(r.version))
//! physical_value = u64_be(counter) || nonce (24)
//!                  || XChaCha20-Poly1305(value_key, nonce,
//!                                        u32_be(11) || "store-state" || digest,
//!                                        aad = 0x00 0x01 || u64_be(counter))
//! ```
//!
//! Each commit writes its records and the new state record in the same atomic batch. On open
//! the state record is authenticated and the digest recomputed over every record on disk (the
//! key-check and state records aside); any difference — an older copy of a record put back in
//! place, a record removed, a record added or copied under another key — refuses the open with
//! [`StoreError::RolledBack`]. A read of a record whose version is above the counter is refused
//! the same way. A store written before versioned records (no state record) is rewritten once,
//! in one flushed batch, as commit 1; a store migrated to its label keeps counting from its
//! last commit.
//!
//! A whole older copy of the database (state record included) is consistent in itself; only a
//! counter kept outside the database detects it. [`SledKv::open_anchored`] takes a
//! [`RollbackAnchor`] (a platform keystore or monotonic counter; [`FileAnchor`] keeps it in a
//! file elsewhere): after every durable commit the counter is recorded in the anchor, and an
//! open refuses a database whose counter is below the anchor's, or a database without a state
//! record while the anchor holds a counter ([`StoreError::RolledBack`]). The database is
//! written before the anchor, so a crash in between leaves the database one commit ahead,
//! which is accepted and recorded. [`SledKv::open`] and [`SledKv::open_labelled`] use
//! [`NoAnchor`].
//!
//! # Commit
//!
//! [`KvStore::commit`] encrypts every put (and the new state record) into one `sled::Batch`,
//! applies it with `Tree::apply_batch` (atomic) and calls `Db::flush` (fsync) before returning
//! `Ok` (durable), then advances the anchor. If the flush (or the anchor) fails the batch may or
//! may not reach the disk (it is atomic either way), so the handle is poisoned: every later call
//! returns [`StoreError::Poisoned`] and the store must be reopened to learn the outcome.
//!
//! Plaintext buffers are zeroized after encryption and decryption. The subkeys are held in
//! [`Zeroizing`] buffers; cipher and MAC instances are built per operation and never stored.

use std::path::Path;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use hush_core::consts::{STORE_STATE_INFO, STORE_STATE_LOGICAL};
use hush_core::store::kv::{Batch, BatchOp, KvEntry, KvStore, Namespace, StoreError};

pub use anchor::{FileAnchor, NoAnchor, RollbackAnchor};

/// HKDF info for the key that hides logical key names.
const INDEX_INFO: &[u8] = b"Hush-Store-Index-v1";
/// HKDF info for the key that encrypts records.
const VALUE_INFO: &[u8] = b"Hush-Store-Value-v1";
/// Attempts to take sled's file lock again when reopening (a just-dropped handle may still hold
/// it while its flusher winds down), [`REOPEN_LOCK_WAIT`] apart.
const REOPEN_LOCK_ATTEMPTS: u32 = 100;
/// Pause between two attempts to take sled's file lock on reopening.
const REOPEN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(20);
/// XChaCha20-Poly1305 nonce length.
const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
const TAG_LEN: usize = 16;
/// Length of the logical-key length prefix in a plaintext.
const LEN_PREFIX: usize = 4;
/// HMAC-SHA256 output length.
const MAC_LEN: usize = 32;
/// Length of a record's physical key: namespace byte plus HMAC.
const PHYSICAL_KEY_LEN: usize = 1 + MAC_LEN;
/// Physical key of the key-check record (the bare `Meta` namespace byte).
const KEY_CHECK_PHYSICAL: [u8; 1] = [Namespace::Meta.as_byte()];
/// Logical key embedded in the key-check record.
const KEY_CHECK_LOGICAL: &[u8] = b"key-check";
/// Value embedded in the key-check record.
const KEY_CHECK_VALUE: &[u8] = b"Hush-Store-Key-Check-v1";
/// Physical key of the state record (commit counter and digest), in the `Meta` prefix.
const STATE_PHYSICAL: [u8; 2] = [Namespace::Meta.as_byte(), 0x01];
/// Length of the version prefix of a record.
const VERSION_LEN: usize = 8;

/// The persistent, encrypted-at-rest [`KvStore`]. See the [module docs](self) for the format.
///
/// Deliberately not `Debug`: it holds key material.
pub struct SledKv {
    /// `None` only while [`KvStore::reopen`] replaces the handle (or after it failed to).
    db: Option<sled::Db>,
    path: std::path::PathBuf,
    index_key: Zeroizing<[u8; 32]>,
    value_key: Zeroizing<[u8; 32]>,
    /// Keys the digest of every record's physical key and version.
    state_key: Zeroizing<[u8; 32]>,
    /// The number of the last commit (the version of the records it wrote).
    counter: u64,
    /// XOR of `HMAC(state_key, physical_key ‖ u64be(version))` over every record.
    digest: [u8; MAC_LEN],
    anchor: Box<dyn RollbackAnchor>,
    rng: Box<dyn CryptoRng + Send>,
    poisoned: bool,
}

impl SledKv {
    /// Opens (creating it if needed) the store in directory `path` with at-rest key `key`.
    ///
    /// `rng` supplies record nonces; it must be a cryptographically secure generator seeded from
    /// the operating system (a deterministic generator re-seeded identically on every open would
    /// reuse nonces).
    ///
    /// # Errors
    /// [`StoreError::WrongKey`] if the store was created with another key,
    /// [`StoreError::Corrupt`] if its key-check record is missing, [`StoreError::Io`] if sled
    /// cannot open the directory (for instance because another handle holds it).
    pub fn open(
        path: &Path,
        key: Zeroizing<[u8; 32]>,
        rng: Box<dyn CryptoRng + Send>,
    ) -> Result<Self, StoreError> {
        Self::open_labelled(path, key, b"", rng)
    }

    /// Opens (creating it if needed) the store in directory `path` with at-rest key `key` and
    /// subkeys derived under `label` (see the [module docs](self)); a store written before labels
    /// (empty label) is migrated once.
    ///
    /// # Errors
    /// As for [`SledKv::open`].
    pub fn open_labelled(
        path: &Path,
        key: Zeroizing<[u8; 32]>,
        label: &[u8],
        rng: Box<dyn CryptoRng + Send>,
    ) -> Result<Self, StoreError> {
        Self::open_anchored(path, key, label, rng, Box::new(NoAnchor))
    }

    /// As [`SledKv::open_labelled`], with the store's commit counter also kept in `anchor`
    /// (outside the database), so that a whole older copy of the database put back is refused
    /// (see the [module docs](self)). [`SledKv::open`] and [`SledKv::open_labelled`] use
    /// [`NoAnchor`].
    ///
    /// # Errors
    /// As for [`SledKv::open`]; [`StoreError::RolledBack`] if the records do not match the
    /// store's digest or the store's counter is below the anchor's.
    pub fn open_anchored(
        path: &Path,
        key: Zeroizing<[u8; 32]>,
        label: &[u8],
        rng: Box<dyn CryptoRng + Send>,
        anchor: Box<dyn RollbackAnchor>,
    ) -> Result<Self, StoreError> {
        let (index_key, value_key) = subkeys(&key, label)?;
        let state_key = state_subkey(&key, label)?;
        let legacy = if label.is_empty() {
            None
        } else {
            let (index_key, value_key) = subkeys(&key, b"")?;
            Some(Subkeys {
                index_key,
                value_key,
                state_key: state_subkey(&key, b"")?,
            })
        };
        drop(key);

        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(backend_error)?;
        let mut store = Self {
            db: Some(db),
            path: path.to_path_buf(),
            index_key,
            value_key,
            state_key,
            counter: 0,
            digest: [0; MAC_LEN],
            anchor,
            rng,
            poisoned: false,
        };
        match (store.check_key(), legacy) {
            (Err(StoreError::WrongKey), Some(old)) => store.migrate_from(Some(old))?,
            (r, _) => {
                r?;
                if !store.load_state()? {
                    // A new store, or one written before versioned records.
                    store.migrate_from(None)?;
                }
            }
        }
        store.check_anchor()?;
        tracing::debug!("encrypted store opened");
        Ok(store)
    }

    /// Refuses to (re)build the state of a store whose anchor holds a counter: such a store had
    /// a state record, so one without it is an older copy (or has lost it).
    fn refuse_unanchored_upgrade(&self) -> Result<(), StoreError> {
        match self.anchor.load()? {
            Some(a) if a > 0 => Err(StoreError::RolledBack(
                "a store without a commit counter, under an anchor that holds one",
            )),
            _ => Ok(()),
        }
    }

    /// Compares the store's counter with the anchor's: refuses an older store, records a newer
    /// counter (a crash after a commit and before its anchor update leaves the store ahead).
    fn check_anchor(&mut self) -> Result<(), StoreError> {
        match self.anchor.load()? {
            Some(a) if self.counter < a => Err(StoreError::RolledBack(
                "the store is older than its rollback anchor",
            )),
            Some(a) if self.counter == a => Ok(()),
            _ => self.anchor.advance(self.counter),
        }
    }

    /// Reads and authenticates the state record, then checks every record against its digest.
    /// Returns `false` if there is no state record.
    fn load_state(&mut self) -> Result<bool, StoreError> {
        let Some(stored) = self.db()?.get(STATE_PHYSICAL).map_err(backend_error)? else {
            return Ok(false);
        };
        let (counter, logical, value) =
            self.open_record(Namespace::Meta, &STATE_PHYSICAL, &stored, true)?;
        if logical != STORE_STATE_LOGICAL {
            return Err(corrupt(Namespace::Meta, "malformed state record"));
        }
        let digest: [u8; MAC_LEN] = value
            .as_slice()
            .try_into()
            .map_err(|_| corrupt(Namespace::Meta, "malformed state record"))?;
        let mut found = [0u8; MAC_LEN];
        for entry in self.db()?.iter() {
            let (physical, stored) = entry.map_err(backend_error)?;
            if is_special(&physical) {
                continue;
            }
            let ns = physical
                .first()
                .and_then(|b| Namespace::from_byte(*b))
                .unwrap_or(Namespace::Meta);
            let version = record_version(&stored).ok_or(corrupt(ns, "record too short"))?;
            xor_into(&mut found, &self.version_mac(&physical, version)?);
        }
        if !bool::from(found.ct_eq(&digest)) {
            tracing::warn!("encrypted store: records do not match the store's digest");
            return Err(StoreError::RolledBack(
                "the records do not match the store's digest (a record was put back, removed or added)",
            ));
        }
        self.counter = counter;
        self.digest = digest;
        Ok(true)
    }

    /// `HMAC-SHA256(state_key, physical_key ‖ u64be(version))`.
    fn version_mac(&self, physical: &[u8], version: u64) -> Result<[u8; MAC_LEN], StoreError> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.state_key.as_slice())
            .map_err(|_| StoreError::Io("state MAC setup failed".to_owned()))?;
        mac.update(physical);
        mac.update(&version.to_be_bytes());
        Ok(mac.finalize().into_bytes().into())
    }

    /// The sled handle, unless the store is poisoned or being reopened.
    fn db(&self) -> Result<&sled::Db, StoreError> {
        self.db.as_ref().ok_or(StoreError::Poisoned)
    }

    /// [`KvStore::reopen`]: closes the sled handle and opens the same directory again with the same keys, clearing a
    /// poisoned state: what a commit whose flush failed left on disk is then what the store
    /// holds (all of the batch or none of it). Callers must reload anything they derived from
    /// the store.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the directory cannot be opened again (the store stays poisoned),
    /// [`StoreError::WrongKey`] / [`StoreError::Corrupt`] as for [`SledKv::open`].
    fn reopen_handle(&mut self) -> Result<(), StoreError> {
        self.poisoned = true;
        if let Some(db) = self.db.take() {
            // Best effort: what can still be written is written before the handle goes.
            let _ = db.flush();
            drop(db);
        }
        let mut last = StoreError::Io("store not reopened".to_owned());
        for _ in 0..REOPEN_LOCK_ATTEMPTS {
            match sled::Config::new().path(&self.path).open() {
                Ok(db) => {
                    self.db = Some(db);
                    self.check_key()?;
                    if !self.load_state()? {
                        return Err(corrupt(Namespace::Meta, "state record missing"));
                    }
                    self.check_anchor()?;
                    self.poisoned = false;
                    tracing::info!("encrypted store reopened");
                    return Ok(());
                }
                Err(e) => {
                    last = backend_error(e);
                    std::thread::sleep(REOPEN_LOCK_WAIT);
                }
            }
        }
        Err(last)
    }

    /// Rewrites every record as a versioned record, with the state record, in one atomic,
    /// flushed batch: the records of a store written before versioned records (as commit 1), or
    /// those of a store written under other subkeys `old` (a store written before labels, under
    /// the empty label; as the commit after its last, once its digest is checked), whose entries
    /// are then removed and whose key-check record is rewritten under this store's subkeys.
    fn migrate_from(&mut self, old: Option<Subkeys>) -> Result<(), StoreError> {
        let relabel = old.is_some();
        let read = match old {
            Some(old) => {
                // Read everything under the old subkeys, then switch back to the new ones.
                let new = self.swap_subkeys(old);
                let read = self.read_all_for_migration();
                self.swap_subkeys(new);
                read?
            }
            None => self.read_all_for_migration()?,
        };
        let Migration {
            entries,
            physical_old,
            counter: old_counter,
        } = read;
        if old_counter.is_none() {
            // A store without a state record (new, or from before versioned records) under an
            // anchor that holds a counter is an older copy, or has lost its state.
            self.refuse_unanchored_upgrade()?;
        }
        let counter = old_counter
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| StoreError::Io("commit counter exhausted".to_owned()))?;
        let mut batch = sled::Batch::default();
        if relabel {
            // A new physical key never equals an old one (another index key), so removing the
            // old entries and inserting the new ones in one batch cannot clash.
            for p in physical_old {
                batch.remove(p);
            }
        }
        let mut digest = [0u8; MAC_LEN];
        let moved = entries.len();
        for (ns, logical, value) in entries {
            let physical = self.physical_key(ns, &logical)?;
            let record = self.seal(&physical, Some(counter), &logical, &value)?;
            xor_into(&mut digest, &self.version_mac(&physical, counter)?);
            batch.insert(physical, record);
        }
        if relabel {
            let record = self.seal(
                &KEY_CHECK_PHYSICAL,
                None,
                KEY_CHECK_LOGICAL,
                KEY_CHECK_VALUE,
            )?;
            batch.insert(KEY_CHECK_PHYSICAL.to_vec(), record);
        }
        let state = self.seal(&STATE_PHYSICAL, Some(counter), STORE_STATE_LOGICAL, &digest)?;
        batch.insert(STATE_PHYSICAL.to_vec(), state);
        self.db()?.apply_batch(batch).map_err(backend_error)?;
        self.db()?.flush().map_err(backend_error)?;
        self.counter = counter;
        self.digest = digest;
        if moved > 0 || relabel {
            tracing::info!(
                records = moved,
                relabel,
                "encrypted store migrated to versioned, labelled records"
            );
        }
        Ok(())
    }

    /// Puts `keys` in place of this store's subkeys, returning the ones it held.
    fn swap_subkeys(&mut self, keys: Subkeys) -> Subkeys {
        Subkeys {
            index_key: std::mem::replace(&mut self.index_key, keys.index_key),
            value_key: std::mem::replace(&mut self.value_key, keys.value_key),
            state_key: std::mem::replace(&mut self.state_key, keys.state_key),
        }
    }

    /// Every logical record under the current subkeys (which must pass the key check) and
    /// every physical key but the key-check and state records'. If there is a state record, the
    /// records are versioned and must match its digest (its counter is returned); otherwise
    /// they are of the format from before versioned records.
    fn read_all_for_migration(&mut self) -> Result<Migration, StoreError> {
        self.check_key()?;
        let versioned = self.load_state()?;
        let mut entries = Vec::new();
        let mut physical_old = Vec::new();
        for entry in self.db()?.iter() {
            let (physical, stored) = entry.map_err(backend_error)?;
            if is_special(&physical) {
                continue;
            }
            let ns = physical
                .first()
                .and_then(|b| Namespace::from_byte(*b))
                .ok_or(corrupt(Namespace::Meta, "malformed physical key"))?;
            self.check_physical_key(ns, &physical)?;
            let (version, logical, value) = self.open_record(ns, &physical, &stored, versioned)?;
            if versioned && version > self.counter {
                return Err(StoreError::RolledBack(
                    "record newer than the store's last commit",
                ));
            }
            let expected = self.physical_key(ns, &logical)?;
            if !bool::from(expected.as_slice().ct_eq(physical.as_ref())) {
                return Err(corrupt(ns, "record stored under another key"));
            }
            entries.push((ns, logical, value));
            physical_old.push(physical);
        }
        Ok(Migration {
            entries,
            physical_old,
            counter: versioned.then_some(self.counter),
        })
    }

    /// Verifies the key-check record, writing it if the database is empty.
    fn check_key(&mut self) -> Result<(), StoreError> {
        let db = self.db()?.clone();
        match db.get(KEY_CHECK_PHYSICAL).map_err(backend_error)? {
            Some(stored) => {
                let (_, logical, value) = self
                    .open_record(Namespace::Meta, &KEY_CHECK_PHYSICAL, &stored, false)
                    .map_err(|_| StoreError::WrongKey)?;
                if logical != KEY_CHECK_LOGICAL || value.as_slice() != KEY_CHECK_VALUE {
                    return Err(StoreError::WrongKey);
                }
                Ok(())
            }
            None if db.is_empty() => {
                let record = self.seal(
                    &KEY_CHECK_PHYSICAL,
                    None,
                    KEY_CHECK_LOGICAL,
                    KEY_CHECK_VALUE,
                )?;
                db.insert(KEY_CHECK_PHYSICAL, record)
                    .map_err(backend_error)?;
                db.flush().map_err(backend_error)?;
                tracing::info!("new encrypted store initialised");
                Ok(())
            }
            None => Err(corrupt(Namespace::Meta, "key-check record missing")),
        }
    }

    /// `ns_byte || HMAC-SHA256(index_key, ns_byte || logical_key)`.
    fn physical_key(&self, ns: Namespace, logical_key: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mac = self.index_mac(ns, logical_key)?;
        let mut physical = Vec::with_capacity(PHYSICAL_KEY_LEN);
        physical.push(ns.as_byte());
        physical.extend_from_slice(&mac);
        Ok(physical)
    }

    /// `HMAC-SHA256(index_key, ns_byte || logical_key)`.
    fn index_mac(&self, ns: Namespace, logical_key: &[u8]) -> Result<[u8; MAC_LEN], StoreError> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.index_key.as_slice())
            .map_err(|_| StoreError::Io("index MAC setup failed".to_owned()))?;
        mac.update(&[ns.as_byte()]);
        mac.update(logical_key);
        Ok(mac.finalize().into_bytes().into())
    }

    /// Builds `[u64be(version)] || nonce || XChaCha20-Poly1305(value_key, nonce,
    /// u32_be(len(key)) || key || value, aad = physical_key [|| u64be(version)])`; without a
    /// version (the key-check record only) neither the prefix nor the AAD suffix is there.
    fn seal(
        &mut self,
        physical_key: &[u8],
        version: Option<u64>,
        logical_key: &[u8],
        value: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let key_len = u32::try_from(logical_key.len())
            .map_err(|_| StoreError::Io("logical key longer than 4 GiB refused".to_owned()))?;
        let prefix = if version.is_some() { VERSION_LEN } else { 0 };
        let total = prefix
            .checked_add(NONCE_LEN)
            .and_then(|n| n.checked_add(LEN_PREFIX))
            .and_then(|n| n.checked_add(logical_key.len()))
            .and_then(|n| n.checked_add(value.len()))
            .and_then(|n| n.checked_add(TAG_LEN))
            .ok_or_else(|| StoreError::Io("record too large".to_owned()))?;

        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut nonce);
        let aad = record_aad(physical_key, version);

        // The plaintext is assembled right after the nonce and encrypted in place; the buffer is
        // allocated once with room for the tag so it never reallocates (leaving no stray copy),
        // and it is wiped on drop should encryption fail.
        let mut record = Zeroizing::new(Vec::with_capacity(total));
        if let Some(v) = version {
            record.extend_from_slice(&v.to_be_bytes());
        }
        record.extend_from_slice(&nonce);
        record.extend_from_slice(&key_len.to_be_bytes());
        record.extend_from_slice(logical_key);
        record.extend_from_slice(value);
        let body = record
            .get_mut(prefix + NONCE_LEN..)
            .ok_or_else(|| StoreError::Io("record buffer too short".to_owned()))?;
        let tag = self
            .cipher()
            .encrypt_inout_detached(&XNonce::from(nonce), &aad, body.into())
            .map_err(|_| StoreError::Io("record encryption failed".to_owned()))?;
        record.extend_from_slice(&tag);
        Ok(std::mem::take(&mut *record))
    }

    /// Authenticates and decrypts a stored record, returning its version (0 when `versioned` is
    /// false: the key-check record and records written before versions), logical key and value.
    fn open_record(
        &self,
        ns: Namespace,
        physical_key: &[u8],
        stored: &[u8],
        versioned: bool,
    ) -> Result<OpenedRecord, StoreError> {
        let (version, stored) = if versioned {
            let (v, rest) = stored
                .split_first_chunk::<VERSION_LEN>()
                .ok_or(corrupt(ns, "record too short"))?;
            (Some(u64::from_be_bytes(*v)), rest)
        } else {
            (None, stored)
        };
        let (nonce, rest) = stored
            .split_at_checked(NONCE_LEN)
            .ok_or(corrupt(ns, "record too short"))?;
        let body_len = rest
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(corrupt(ns, "record too short"))?;
        let (ciphertext, tag) = rest
            .split_at_checked(body_len)
            .ok_or(corrupt(ns, "record too short"))?;
        let nonce = XNonce::try_from(nonce).map_err(|_| corrupt(ns, "record too short"))?;
        let tag = Tag::try_from(tag).map_err(|_| corrupt(ns, "record too short"))?;

        let mut plaintext = Zeroizing::new(ciphertext.to_vec());
        self.cipher()
            .decrypt_inout_detached(
                &nonce,
                &record_aad(physical_key, version),
                plaintext.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| corrupt(ns, "authentication failed"))?;

        let (len_prefix, rest) = plaintext
            .split_first_chunk::<LEN_PREFIX>()
            .ok_or(corrupt(ns, "malformed plaintext"))?;
        let key_len = usize::try_from(u32::from_be_bytes(*len_prefix))
            .map_err(|_| corrupt(ns, "malformed plaintext"))?;
        let (logical_key, value) = rest
            .split_at_checked(key_len)
            .ok_or(corrupt(ns, "malformed plaintext"))?;
        Ok((
            version.unwrap_or(0),
            logical_key.to_vec(),
            Zeroizing::new(value.to_vec()),
        ))
    }

    /// A cipher keyed with the value key (built per use so no unzeroized copy outlives it).
    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(*self.value_key).into())
    }

    /// Fails if an earlier commit left the handle in an unknown state.
    fn ensure_usable(&self) -> Result<(), StoreError> {
        if self.poisoned {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }
}

impl KvStore for SledKv {
    fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        self.ensure_usable()?;
        let physical = self.physical_key(ns, key)?;
        let Some(stored) = self.db()?.get(&physical).map_err(backend_error)? else {
            return Ok(None);
        };
        let (version, logical, value) = self
            .open_record(ns, &physical, &stored, true)
            .inspect_err(log_corrupt)?;
        if version > self.counter {
            return Err(StoreError::RolledBack(
                "record newer than the store's last commit",
            ));
        }
        if !bool::from(logical.as_slice().ct_eq(key)) {
            let err = corrupt(ns, "record holds another logical key");
            log_corrupt(&err);
            return Err(err);
        }
        Ok(Some(value))
    }

    fn scan(&self, ns: Namespace) -> Result<Vec<KvEntry>, StoreError> {
        self.ensure_usable()?;
        let mut records = Vec::new();
        for entry in self.db()?.scan_prefix([ns.as_byte()]) {
            let (physical, stored) = entry.map_err(backend_error)?;
            if ns == Namespace::Meta && is_special(&physical) {
                continue;
            }
            let (version, logical, value) = self
                .check_physical_key(ns, &physical)
                .and_then(|()| self.open_record(ns, &physical, &stored, true))
                .inspect_err(log_corrupt)?;
            if version > self.counter {
                return Err(StoreError::RolledBack(
                    "record newer than the store's last commit",
                ));
            }
            let expected = self.physical_key(ns, &logical)?;
            if !bool::from(expected.as_slice().ct_eq(physical.as_ref())) {
                let err = corrupt(ns, "record stored under another key");
                log_corrupt(&err);
                return Err(err);
            }
            records.push((logical, value));
        }
        records.sort_by(|(a, _), (b, _)| a.cmp(b));
        Ok(records)
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        self.ensure_usable()?;
        if batch.is_empty() {
            return Ok(());
        }
        let next = self
            .counter
            .checked_add(1)
            .ok_or_else(|| StoreError::Io("commit counter exhausted".to_owned()))?;
        // The outcome per physical key (the last operation on it wins, as in the batch).
        let mut outcome: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            std::collections::BTreeMap::new();
        for op in batch {
            match op {
                BatchOp::Put { ns, key, value } => {
                    let physical = self.physical_key(ns, &key)?;
                    let record = self.seal(&physical, Some(next), &key, &value)?;
                    outcome.insert(physical, Some(record));
                }
                BatchOp::Delete { ns, key } => {
                    outcome.insert(self.physical_key(ns, &key)?, None);
                }
            }
        }
        let mut digest = self.digest;
        let mut sled_batch = sled::Batch::default();
        for (physical, record) in outcome {
            if let Some(old) = self.db()?.get(&physical).map_err(backend_error)? {
                let ns = physical
                    .first()
                    .and_then(|b| Namespace::from_byte(*b))
                    .unwrap_or(Namespace::Meta);
                let version = record_version(&old).ok_or(corrupt(ns, "record too short"))?;
                xor_into(&mut digest, &self.version_mac(&physical, version)?);
            }
            match record {
                Some(record) => {
                    xor_into(&mut digest, &self.version_mac(&physical, next)?);
                    sled_batch.insert(physical, record);
                }
                None => sled_batch.remove(physical),
            }
        }
        let state = self.seal(&STATE_PHYSICAL, Some(next), STORE_STATE_LOGICAL, &digest)?;
        sled_batch.insert(STATE_PHYSICAL.to_vec(), state);
        #[cfg(feature = "fault-injection")]
        faults::before_write(&self.path)?;
        self.db()?.apply_batch(sled_batch).map_err(backend_error)?;
        #[cfg(feature = "fault-injection")]
        let flushed = faults::before_flush(&self.path)
            .and_then(|()| self.db()?.flush().map_err(backend_error));
        #[cfg(not(feature = "fault-injection"))]
        let flushed = self.db()?.flush().map_err(backend_error);
        if let Err(e) = flushed {
            self.poisoned = true;
            tracing::error!("store flush failed after applying a batch; handle poisoned");
            return Err(e);
        }
        self.counter = next;
        self.digest = digest;
        // The database first, the anchor second: a crash in between leaves the store one commit
        // ahead of its anchor, which the next open accepts.
        if let Err(e) = self.anchor.advance(next) {
            self.poisoned = true;
            tracing::error!("rollback anchor not advanced after a commit; handle poisoned");
            return Err(e);
        }
        Ok(())
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn reopen(&mut self) -> Result<(), StoreError> {
        self.reopen_handle()
    }
}

impl SledKv {
    /// Checks that a physical key found under the `ns` prefix has the record-key shape.
    fn check_physical_key(&self, ns: Namespace, physical: &[u8]) -> Result<(), StoreError> {
        if physical.len() == PHYSICAL_KEY_LEN && physical.first() == Some(&ns.as_byte()) {
            Ok(())
        } else {
            Err(corrupt(ns, "malformed physical key"))
        }
    }
}

/// The index and value subkeys of `key` under `label` (see the [module docs](self)).
#[allow(clippy::type_complexity)]
fn subkeys(
    key: &[u8; 32],
    label: &[u8],
) -> Result<(Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>), StoreError> {
    let hkdf = Hkdf::<Sha256>::new(None, key.as_slice());
    let mut index_key = Zeroizing::new([0u8; 32]);
    let mut value_key = Zeroizing::new([0u8; 32]);
    hkdf.expand_multi_info(&[INDEX_INFO, label], index_key.as_mut_slice())
        .and_then(|()| hkdf.expand_multi_info(&[VALUE_INFO, label], value_key.as_mut_slice()))
        .map_err(|_| StoreError::Io("subkey derivation failed".to_owned()))?;
    Ok((index_key, value_key))
}

/// An opened record: its version, logical key and value.
type OpenedRecord = (u64, Vec<u8>, Zeroizing<Vec<u8>>);

/// The subkeys of one at-rest key under one label.
struct Subkeys {
    index_key: Zeroizing<[u8; 32]>,
    value_key: Zeroizing<[u8; 32]>,
    state_key: Zeroizing<[u8; 32]>,
}

/// What [`SledKv::read_all_for_migration`] read.
struct Migration {
    /// Every logical record.
    entries: Vec<(Namespace, Vec<u8>, Zeroizing<Vec<u8>>)>,
    /// Every physical key but the key-check and state records'.
    physical_old: Vec<sled::IVec>,
    /// The commit counter of the store read, if it had a state record.
    counter: Option<u64>,
}

/// The HKDF-SHA256 state key of `key` under `label` (see the [module docs](self)).
fn state_subkey(key: &[u8; 32], label: &[u8]) -> Result<Zeroizing<[u8; 32]>, StoreError> {
    let hkdf = Hkdf::<Sha256>::new(None, key.as_slice());
    let mut state_key = Zeroizing::new([0u8; 32]);
    hkdf.expand_multi_info(&[STORE_STATE_INFO, label], state_key.as_mut_slice())
        .map_err(|_| StoreError::Io("subkey derivation failed".to_owned()))?;
    Ok(state_key)
}

/// The AEAD associated data of a record: its physical key, then its version if it has one.
fn record_aad(physical_key: &[u8], version: Option<u64>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(physical_key.len() + VERSION_LEN);
    aad.extend_from_slice(physical_key);
    if let Some(v) = version {
        aad.extend_from_slice(&v.to_be_bytes());
    }
    aad
}

/// The version prefix of a stored record (not authenticated until the record is opened).
fn record_version(stored: &[u8]) -> Option<u64> {
    stored
        .split_first_chunk::<VERSION_LEN>()
        .map(|(v, _)| u64::from_be_bytes(*v))
}

/// `acc ^= x`.
fn xor_into(acc: &mut [u8; MAC_LEN], x: &[u8; MAC_LEN]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a ^= b;
    }
}

/// The key-check and state records, which are not logical records.
fn is_special(physical: &[u8]) -> bool {
    physical == KEY_CHECK_PHYSICAL.as_slice() || physical == STATE_PHYSICAL.as_slice()
}

/// A [`StoreError::Corrupt`] for `namespace`.
fn corrupt(namespace: Namespace, reason: &'static str) -> StoreError {
    StoreError::Corrupt { namespace, reason }
}

/// Logs a corrupt-record error (namespace and reason only).
fn log_corrupt(err: &StoreError) {
    if let StoreError::Corrupt { namespace, reason } = err {
        tracing::warn!(?namespace, reason, "corrupt record in encrypted store");
    }
}

/// Maps a sled error to [`StoreError::Io`]. Sled's messages describe the failure, never the data.
fn backend_error(err: sled::Error) -> StoreError {
    StoreError::Io(format!("sled: {err}"))
}

mod anchor;

#[cfg(feature = "fault-injection")]
pub mod faults;

#[cfg(test)]
mod tests;
