//! What every connection shares: the stores, the writer, the router, the pusher, rate limits,
//! the cache of device lists, pending device links, metrics and settings.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hush_proto::wire::DeviceIdentityKey;
use prost::Message;
use rand::RngExt;
use tokio_util::sync::CancellationToken;

use crate::admit::Admission;
use crate::clock::Clock;
use crate::config::Config;
use crate::conn::Refusal;
use crate::ops::{KeyLimit, Metrics, RefusalReason};
use crate::push::{PushConfig, PushTargets, Pusher, Registration, Vapid};
use crate::ratelimit::Limiter;
use crate::router::Router;
use crate::store::blobs::BlobStore;
use crate::store::{DeliveryAccess, DeviceId, RelayStore, StoreError};
use crate::verify::{CheckedList, VerifyError};
use crate::writer::{StoreFlush, Writer, WriterThreads};

/// Milliseconds since the Unix epoch. The relay is an I/O shell: it reads the clock.
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[allow(clippy::disallowed_methods)]
pub(crate) fn instant() -> Instant {
    Instant::now()
}

#[allow(clippy::disallowed_methods)]
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill(&mut b[..]);
    b
}

/// Sees the bytes of frames the relay writes (`Running::tap_frames`).
pub type FrameTap = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// A cached device list and when it was last known to be the newest.
type CachedList = (Arc<AccountDevices>, Instant);

/// One device's entry in the cached device list of its account.
#[derive(Clone, Debug)]
pub(crate) struct ListedDevice {
    pub(crate) signing_key: [u8; 32],
    pub(crate) identity: DeviceIdentityKey,
}

/// The relay's view of an account's current list.
#[derive(Clone, Debug)]
pub(crate) struct AccountDevices {
    pub(crate) version: u64,
    pub(crate) devices: BTreeMap<u32, ListedDevice>,
}

impl AccountDevices {
    pub(crate) fn from_signed(
        bytes: &[u8],
        account: Option<&[u8; 32]>,
        max: usize,
    ) -> Result<Self, VerifyError> {
        let checked = CheckedList::check(bytes, account, max)?;
        // The identities (with their DH keys) as listed, for building bundles.
        let signed = hush_proto::wire::SignedDeviceList::decode(bytes)
            .map_err(|_| VerifyError::Malformed("signed device list"))?;
        let list = hush_proto::wire::DeviceList::decode(signed.device_list.as_slice())
            .map_err(|_| VerifyError::Malformed("device list"))?;
        let mut devices = BTreeMap::new();
        for d in list.devices {
            let (Some(identity), Some(sk)) = (d.identity, checked.devices.get(&d.device_id)) else {
                return Err(VerifyError::Malformed("device identity"));
            };
            devices.insert(
                d.device_id,
                ListedDevice {
                    signing_key: *sk,
                    identity,
                },
            );
        }
        Ok(Self {
            version: checked.version,
            devices,
        })
    }
}

/// The per-kind rate limiters.
pub(crate) struct RateLimiters {
    sends: Limiter<DeviceId>,
    prekey_fetches: Limiter<DeviceId>,
    uploads: Limiter<DeviceId>,
    pub(crate) accounts: Limiter<IpAddr>,
    pub(crate) blob_uploads: Limiter<DeviceId>,
    /// Downloads of one blob (by id), everyone together.
    pub(crate) blob_downloads: Limiter<[u8; 16]>,
    /// Blob downloads per downloading account.
    pub(crate) account_blob_downloads: Limiter<[u8; 32]>,
    /// Blob bytes downloaded per downloading account, in KiB.
    pub(crate) account_blob_kib: Limiter<[u8; 32]>,
    account_sends: Limiter<[u8; 32]>,
    account_prekey_fetches: Limiter<[u8; 32]>,
    account_uploads: Limiter<[u8; 32]>,
    one_time_target: Limiter<DeviceId>,
    one_time_pair: Limiter<([u8; 32], [u8; 32])>,
    one_time_requester: Limiter<[u8; 32]>,
    group_log_appends: Limiter<DeviceId>,
    group_log_reads: Limiter<DeviceId>,
}

/// One-time keys granted to a bundle fetch: what to give back if none were left to hand out.
pub(crate) struct OneTimeGrant {
    requester: [u8; 32],
    target: DeviceId,
}

impl RateLimiters {
    /// Takes a token from the device's bucket and from its account's.
    fn take(
        device: &Limiter<DeviceId>,
        account: &Limiter<[u8; 32]>,
        who: &DeviceId,
        now: Instant,
    ) -> Result<(), Refusal> {
        device.check(who, 1, now).map_err(Refusal::rate)?;
        account.check(&who.account, 1, now).map_err(|wait| {
            // Refused: the device keeps its token.
            device.refund(who, 1);
            Refusal::rate(wait)
        })
    }

    pub(crate) fn send(&self, who: &DeviceId, now: Instant) -> Result<(), Refusal> {
        Self::take(&self.sends, &self.account_sends, who, now)
    }

    pub(crate) fn fetch(&self, who: &DeviceId, now: Instant) -> Result<(), Refusal> {
        Self::take(&self.prekey_fetches, &self.account_prekey_fetches, who, now)
    }

    pub(crate) fn upload(&self, who: &DeviceId, now: Instant) -> Result<(), Refusal> {
        Self::take(&self.uploads, &self.account_uploads, who, now)
    }

    /// A group log append by `who` (a device, or an anonymous connection's address block).
    pub(crate) fn group_log_append(&self, who: &DeviceId, now: Instant) -> Result<(), Refusal> {
        self.group_log_appends
            .check(who, 1, now)
            .map_err(Refusal::rate)
    }

    /// A group log read by `who` (a device, or an anonymous connection's address block).
    pub(crate) fn group_log_read(&self, who: &DeviceId, now: Instant) -> Result<(), Refusal> {
        self.group_log_reads
            .check(who, 1, now)
            .map_err(Refusal::rate)
    }

    /// Whether a bundle of `target` fetched by account `requester` may carry one-time keys: one
    /// token from each of the target's, the pair's and the requester's buckets, or none taken
    /// and the limit that is empty.
    pub(crate) fn one_time_keys(
        &self,
        requester: &[u8; 32],
        target: &DeviceId,
        now: Instant,
    ) -> Result<OneTimeGrant, KeyLimit> {
        let pair = (*requester, target.account);
        self.one_time_target
            .check(target, 1, now)
            .map_err(|_| KeyLimit::Target)?;
        if self.one_time_pair.check(&pair, 1, now).is_err() {
            self.one_time_target.refund(target, 1);
            return Err(KeyLimit::Pair);
        }
        if self.one_time_requester.check(requester, 1, now).is_err() {
            self.one_time_target.refund(target, 1);
            self.one_time_pair.refund(&pair, 1);
            return Err(KeyLimit::Requester);
        }
        Ok(OneTimeGrant {
            requester: *requester,
            target: *target,
        })
    }

    /// Gives back a grant that handed out nothing (the target had no one-time keys left).
    pub(crate) fn refund_one_time_keys(&self, grant: &OneTimeGrant) {
        self.one_time_target.refund(&grant.target, 1);
        self.one_time_pair
            .refund(&(grant.requester, grant.target.account), 1);
        self.one_time_requester.refund(&grant.requester, 1);
    }
}

/// Who a blob transfer acts for: the device of its control connection and whether that
/// connection is authenticated (else anonymous), or `None` while it is neither.
pub(crate) type BlobCaller = Option<(DeviceId, bool)>;

/// The blob keys of open control connections over TCP: a blob connection presents one to act
/// for the control connection it was derived from (docs/RELAY_PROTOCOL.md §17).
#[derive(Default)]
pub(crate) struct BlobKeys(Mutex<HashMap<[u8; 32], tokio::sync::watch::Receiver<BlobCaller>>>);

impl BlobKeys {
    /// Registers `key` while the control connection is open; it updates `who` as its phase
    /// changes.
    pub(crate) fn insert(&self, key: [u8; 32], who: tokio::sync::watch::Receiver<BlobCaller>) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, who);
    }

    /// Forgets `key` (its control connection ended).
    pub(crate) fn remove(&self, key: &[u8; 32]) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// Who a blob connection presenting `key` acts for now; `None` for an unknown key.
    pub(crate) fn caller(&self, key: &[u8; 32]) -> BlobCaller {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .and_then(|w| *w.borrow())
    }
}

/// Everything the connection tasks share.
pub struct Relay {
    pub(crate) cfg: Config,
    pub(crate) store: Arc<dyn RelayStore>,
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) router: Arc<dyn Router>,
    /// Every mutation of `store` goes through it (`crate::writer`).
    pub(crate) writer: Writer,
    pub(crate) pusher: Pusher,
    /// The VAPID public key (65 bytes) that signs WebPush wake-ups, as `PushServerKey`
    /// answers it; `None` when the relay has no VAPID key.
    pub(crate) vapid_public: Option<Vec<u8>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) rate_limiters: RateLimiters,
    /// Cached device lists, with when each was last known to be the newest.
    lists: Mutex<HashMap<[u8; 32], CachedList>>,
    /// Sees every frame written on a control stream, when set (`Running::tap_frames`: tests
    /// that check what the relay tells clients).
    pub(crate) tap: Arc<std::sync::RwLock<Option<FrameTap>>>,
    /// Devices' delivery access as last read, and when (`Relay::delivery_access`).
    access: Mutex<HashMap<DeviceId, (Option<DeliveryAccess>, Instant)>>,
    /// Connections per address block and account, and the pending device links.
    pub(crate) admission: Arc<Admission>,
    /// Devices told in the current low spell that their one-time keys run low (set when a claim
    /// first takes a count below the threshold, cleared when an upload brings both above it),
    /// so that claims do not send one notification each. In memory: after a restart a device
    /// may be told once more. Each with when it was told.
    pre_keys_low: Mutex<HashMap<DeviceId, Instant>>,
    pub(crate) draining: AtomicBool,
    pub(crate) next_conn: AtomicU64,
    /// The blob keys of the open control connections over TCP, each with who its blob
    /// connections act for (docs/RELAY_PROTOCOL.md §17).
    pub(crate) blob_keys: BlobKeys,
    /// Where the time is read (the system's clocks, or a test's).
    pub(crate) clock: Arc<dyn Clock>,
}

fn push_config(cfg: &Config, vapid: Option<Arc<Vapid>>) -> PushConfig {
    PushConfig {
        timeout: Duration::from_millis(cfg.push.timeout_ms),
        allow_plain_http: cfg.push.allow_plain_http,
        // The same test switch: plain http and loopback endpoints go together.
        allow_private_addresses: cfg.push.allow_plain_http,
        vapid,
        ..PushConfig::default()
    }
}

/// Push endpoints as stored, for the pusher.
struct StoreTargets(Arc<dyn RelayStore>);

impl PushTargets for StoreTargets {
    fn endpoint(&self, device: &DeviceId) -> Option<Registration> {
        self.0.push_endpoint(device).ok().flatten()
    }

    fn endpoint_gone(&self, device: &DeviceId, url: &str) {
        let current = self.0.push_endpoint(device).ok().flatten();
        if current.is_some_and(|r| r.url == url) {
            let _ = self.0.set_push_endpoint(device, None);
        }
    }
}

/// The background tasks of a relay (flusher, pusher), to await after shutdown.
pub struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    writer: WriterThreads,
}

impl Background {
    /// Waits for the background tasks and the writer's threads.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        self.writer.join().await;
    }
}

impl Relay {
    /// Assembles a relay over its stores. Starts the group-commit flusher and the pusher (must be
    /// called inside a tokio runtime); they stop when `shutdown` is cancelled and the relay dropped.
    /// `vapid` signs WebPush wake-ups (without it they go unsigned).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Config,
        vapid: Option<Arc<Vapid>>,
        store: Arc<dyn RelayStore>,
        blobs: Arc<dyn BlobStore>,
        router: Arc<dyn Router>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<(Arc<Self>, Background)> {
        // A shared (Redis) store makes every operation atomic by itself and answers over the
        // network: lanes overlap the round trips. sled relies on one applier.
        let lanes = if store.shared() {
            cfg.redis_writer_lanes as usize
        } else {
            1
        };
        let (writer, writer_threads) = Writer::spawn_lanes(
            Arc::new(StoreFlush(Arc::clone(&store))),
            Arc::clone(&metrics),
            cfg.flush_batch_max,
            lanes,
        )?;
        let vapid_public = vapid.as_ref().map(|v| v.public_key_bytes().to_vec());
        let (pusher, push_task) = Pusher::spawn(
            push_config(&cfg, vapid),
            Arc::new(StoreTargets(Arc::clone(&store))),
            Arc::clone(&metrics.push),
            shutdown,
        );
        let rate_limiters = RateLimiters {
            sends: Limiter::new(cfg.rate.sends),
            prekey_fetches: Limiter::new(cfg.rate.prekey_fetches),
            uploads: Limiter::new(cfg.rate.uploads),
            accounts: Limiter::new(cfg.rate.account_creations),
            blob_uploads: Limiter::new(cfg.rate.blob_uploads),
            blob_downloads: Limiter::new(cfg.rate.blob_downloads),
            account_blob_downloads: Limiter::new(cfg.rate.account_blob_downloads),
            account_blob_kib: Limiter::new(kib_rate(cfg.rate.account_blob_download_mib)),
            account_sends: Limiter::new(cfg.rate.account_sends),
            account_prekey_fetches: Limiter::new(cfg.rate.account_prekey_fetches),
            account_uploads: Limiter::new(cfg.rate.account_uploads),
            one_time_target: Limiter::new(cfg.rate.one_time_keys_per_target),
            one_time_pair: Limiter::new(cfg.rate.one_time_keys_per_pair),
            one_time_requester: Limiter::new(cfg.rate.one_time_keys_per_requester),
            group_log_appends: Limiter::new(cfg.rate.group_log_appends),
            group_log_reads: Limiter::new(cfg.rate.group_log_reads),
        };
        // The gauge starts from what the store holds (a reopened database is not empty).
        if let Ok(bytes) = store.mailbox_bytes() {
            metrics
                .mailbox_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        metrics
            .blob_bytes_stored
            .set(i64::try_from(blobs.total_bytes().unwrap_or(0)).unwrap_or(i64::MAX));
        if let Ok(bytes) = store.group_log_bytes() {
            metrics
                .group_log_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let relay = Arc::new(Self {
            admission: Arc::new(Admission::new(&cfg, Arc::clone(&metrics))),
            cfg,
            store,
            blobs,
            router,
            writer,
            pusher,
            vapid_public,
            metrics,
            rate_limiters,
            lists: Mutex::new(HashMap::new()),
            access: Mutex::new(HashMap::new()),
            tap: Arc::new(std::sync::RwLock::new(None)),
            pre_keys_low: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            blob_keys: BlobKeys::default(),
            clock,
        });
        Ok((
            relay,
            Background {
                tasks: vec![push_task],
                writer: writer_threads,
            },
        ))
    }

    /// The time now, on the relay's clock.
    pub(crate) fn now(&self) -> crate::conn::Now {
        crate::conn::Now {
            at: self.clock.instant(),
            wall_ms: self.clock.wall_ms(),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether the relay is serving: false once draining started, or while a cluster it relies on
    /// does not answer.
    pub fn healthy(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.router.healthy()
    }

    pub(crate) fn devices_of(
        &self,
        account: &[u8; 32],
    ) -> Result<Option<Arc<AccountDevices>>, Refusal> {
        self.devices_of_within(account, crate::limits::LIST_RECHECK)
    }

    /// As [`Relay::devices_of`], checking a cached list against the shared store (when there is
    /// one) unless it was checked within `max_age` (zero for authentication: a device removed
    /// through another node is refused at once).
    pub(crate) fn devices_of_within(
        &self,
        account: &[u8; 32],
        max_age: Duration,
    ) -> Result<Option<Arc<AccountDevices>>, Refusal> {
        let now = self.clock.instant();
        let cached = self.lists.lock().ok().and_then(|l| l.get(account).cloned());
        if let Some((d, checked)) = cached {
            // Other relay nodes publish lists to the shared store: a copy checked within
            // `max_age` is used as it is, an older one only once the store's version
            // (one small read) says it is still the newest.
            if !self.shared_store() || now.saturating_duration_since(checked) < max_age {
                return Ok(Some(d));
            }
            if self.store.device_list_version(account)? == Some(d.version) {
                if let Ok(mut l) = self.lists.lock()
                    && let Some(e) = l.get_mut(account)
                    && e.0.version == d.version
                {
                    e.1 = now;
                }
                return Ok(Some(d));
            }
        }
        let Some((_, bytes)) = self.store.device_list(account)? else {
            return Ok(None);
        };
        let devices = Arc::new(
            AccountDevices::from_signed(&bytes, Some(account), usize::MAX)
                .map_err(|_| StoreError::Corrupt("lists"))?,
        );
        if let Ok(mut l) = self.lists.lock() {
            // A newer list may have been cached meanwhile (a publish): never replace it.
            let cached = l
                .entry(*account)
                .and_modify(|(d, at)| {
                    if d.version <= devices.version {
                        *d = Arc::clone(&devices);
                        *at = now;
                    }
                })
                .or_insert_with(|| (Arc::clone(&devices), now));
            return Ok(Some(Arc::clone(&cached.0)));
        }
        Ok(Some(devices))
    }

    /// What lets sealed sends into `device`'s queue. Cached: for good on a store of its own
    /// (this node's `SetDeliveryToken` drops the copy), for [`crate::limits::LIST_RECHECK`] on a
    /// shared one (another node may have changed it).
    pub(crate) fn delivery_access(
        &self,
        device: &DeviceId,
    ) -> Result<Option<DeliveryAccess>, Refusal> {
        let now = self.clock.instant();
        let cached = self.access.lock().ok().and_then(|m| m.get(device).copied());
        if let Some((access, at)) = cached
            && (!self.shared_store()
                || now.saturating_duration_since(at) < crate::limits::LIST_RECHECK)
        {
            return Ok(access);
        }
        self.reload_access(device)
    }

    /// Hands the bytes about to be written on a control stream to the tap, if one is set.
    pub(crate) fn tap_output(&self, bytes: &[u8]) {
        if let Ok(t) = self.tap.read()
            && let Some(f) = t.as_ref()
        {
            f(bytes);
        }
    }

    /// `device`'s delivery access read from the store now (and cached).
    pub(crate) fn reload_access(
        &self,
        device: &DeviceId,
    ) -> Result<Option<DeliveryAccess>, Refusal> {
        let access = self.store.delivery_access(device)?;
        if let Ok(mut m) = self.access.lock() {
            m.insert(*device, (access, self.clock.instant()));
        }
        Ok(access)
    }

    /// Drops the cached delivery access of `device` (after it changed or the device left).
    pub(crate) fn forget_access(&self, device: &DeviceId) {
        if let Ok(mut m) = self.access.lock() {
            m.remove(device);
        }
    }

    /// Whether other relay nodes write the same store (a cluster).
    pub(crate) fn shared_store(&self) -> bool {
        self.store.shared()
    }

    pub(crate) fn cache_list(&self, account: [u8; 32], devices: AccountDevices) {
        if let Ok(mut l) = self.lists.lock() {
            let newer = l
                .get(&account)
                .is_none_or(|(d, _)| d.version < devices.version);
            if newer {
                l.insert(account, (Arc::new(devices), self.clock.instant()));
            }
        }
    }

    /// Sets the mailbox bytes gauge from the store (after every change of the mailboxes). Cheap
    /// enough for every send and ack: the stores publish their total in an atomic, read here
    /// without their lock.
    pub(crate) fn update_mailbox_gauge(&self) {
        if let Ok(bytes) = self.store.mailbox_bytes() {
            self.metrics
                .mailbox_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Whether `device`, whose one-time keys run low, is to be told now: true once per low
    /// spell. On a shared store the spell may end through another node (the device uploads
    /// there), which this node does not see: it tells again once `crate::limits::PRE_KEYS_LOW_RETELL`
    /// has passed.
    pub(crate) fn first_low(&self, device: &DeviceId) -> bool {
        let now = self.clock.instant();
        let shared = self.shared_store();
        self.pre_keys_low
            .lock()
            .map(|mut s| match s.get_mut(device) {
                Some(told)
                    if !shared
                        || now.saturating_duration_since(*told)
                            < crate::limits::PRE_KEYS_LOW_RETELL =>
                {
                    false
                }
                Some(told) => {
                    *told = now;
                    true
                }
                None => {
                    s.insert(*device, now);
                    true
                }
            })
            .unwrap_or(false)
    }

    /// Ends `device`'s low spell (it uploaded enough keys, or it is gone): the next claim that
    /// takes it below the threshold tells it again.
    pub(crate) fn rearm_low(&self, device: &DeviceId) {
        if let Ok(mut s) = self.pre_keys_low.lock() {
            s.remove(device);
        }
    }

    pub(crate) fn refuse_count(&self, r: &Refusal) {
        self.metrics.refusals.inc(RefusalReason::of(r.code));
    }
}

/// A rate in MiB as one in KiB (the unit the byte limiter counts in).
fn kib_rate(mib: crate::config::RateLimit) -> crate::config::RateLimit {
    crate::config::RateLimit::new(mib.per_second * 1024.0, mib.burst.saturating_mul(1024))
}

/// The unit account creation is limited by: an IPv4 address, or an IPv6 /64 (what one host
/// or customer usually gets, so that rotating addresses inside it does not help).
pub(crate) fn address_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}
