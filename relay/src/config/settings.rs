//! The one definition of every setting.
//!
//! Each entry of the [`settings!`] table below gives a setting's field (its name and type), its
//! default, its documentation, the value name and help line of its flag, and the check its value
//! must pass. Everything else is derived from it: the [`Config`] struct and its `Default`, the
//! flag (`--` and the name with dashes), the environment variable (`HUSH_RELAY_` and the name in
//! capitals), the key in the settings file (the name, or under a table: `[rate.sends]` for the
//! field `sends` of the group `rate`, named `rate_sends`), the `--help` text, and the sample file
//! and table of docs/OPERATIONS.md (see [`super::doc`]). Adding a setting is adding one entry.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::value::{
    Check, DAY_MS, SettingValue, any, cert_names, key_prefix, positive, rate, redis_nodes,
    some_path, some_text, v4_bits, v6_bits,
};
use super::{RateLimit, StoreKind, TcpListen, VapidSubject};

/// One setting, as the table defines it.
pub(crate) struct Setting {
    /// Its name: the field's, prefixed by the group's for a field of a group (`rate_sends`).
    pub(crate) name: &'static str,
    /// The table of the settings file it is under (`rate`), if any.
    pub(crate) table: Option<&'static str>,
    /// Its key in the settings file, within its table.
    pub(crate) key: &'static str,
    /// What its flag takes, as `--help` shows it (`BYTES`, `MS`, `N`, ...).
    pub(crate) value_name: &'static str,
    /// One line for `--help`, with the unit.
    pub(crate) help: &'static str,
    /// What it does, one doc-comment line per line.
    #[cfg_attr(not(test), allow(dead_code))] // read by the documentation renderer
    pub(crate) doc: &'static str,
    /// Its field in [`Config`].
    pub(crate) field: Box<dyn Access>,
}

impl Setting {
    /// The flag, `--max-queue-len`.
    pub(crate) fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }

    /// The environment variable, `HUSH_RELAY_MAX_QUEUE_LEN`.
    pub(crate) fn env(&self) -> String {
        super::env_name(self.name)
    }

    /// The key in the settings file with its table, `rate.sends`.
    #[cfg_attr(not(test), allow(dead_code))] // read by the documentation renderer
    pub(crate) fn toml_key(&self) -> String {
        match self.table {
            Some(t) => format!("{t}.{}", self.key),
            None => self.key.to_string(),
        }
    }

    /// The default in its text form, followed by `= 16 KiB` or `= 30 days` where that reads
    /// better.
    pub(crate) fn shown_default(&self) -> String {
        let text = self.field.text(&Config::default());
        match super::value::readable(self.value_name, &text) {
            Some(readable) => format!("{text} = {readable}"),
            None => text,
        }
    }

    /// Its line in `--help`.
    pub(crate) fn help_line(&self) -> String {
        format!(
            "{} [default: {}] [env: {}]",
            self.help,
            self.shown_default(),
            self.env()
        )
    }

    /// Its flag, global so that it may also follow a subcommand.
    pub(crate) fn arg(&self) -> clap::Arg {
        let arg = clap::Arg::new(self.name)
            .long(self.name.replace('_', "-"))
            .global(true)
            .value_name(self.value_name)
            .help(self.help_line());
        if self.field.switch() {
            arg.num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
        } else {
            arg
        }
    }
}

/// A setting's field in [`Config`], whatever its type.
pub(crate) trait Access {
    /// Sets it from the text of a flag or variable.
    fn set_text(&self, config: &mut Config, text: &str) -> Result<(), String>;
    /// Sets it from its value in the settings file.
    fn set_toml(&self, config: &mut Config, value: toml::Value) -> Result<(), String>;
    /// Its text form.
    fn text(&self, config: &Config) -> String;
    /// Its form in the settings file.
    #[cfg_attr(not(test), allow(dead_code))] // read by the documentation renderer
    fn toml(&self, config: &Config) -> toml::Value;
    /// Checks its value.
    fn check(&self, config: &Config) -> Result<(), &'static str>;
    /// Whether its flag may be given without a value.
    fn switch(&self) -> bool;
    /// The text and file forms of the `n`th test variant of its value in `config`.
    #[cfg(test)]
    fn variant(&self, config: &Config, n: u32) -> (String, toml::Value);
}

/// The field of type `T` a setting reads and writes.
struct Field<T> {
    get: fn(&Config) -> &T,
    get_mut: fn(&mut Config) -> &mut T,
    check: Check<T>,
}

impl<T: SettingValue> Access for Field<T> {
    fn set_text(&self, config: &mut Config, text: &str) -> Result<(), String> {
        *(self.get_mut)(config) = T::from_text(text)?;
        Ok(())
    }

    fn set_toml(&self, config: &mut Config, value: toml::Value) -> Result<(), String> {
        (self.get_mut)(config).set_from_toml(value)
    }

    fn text(&self, config: &Config) -> String {
        (self.get)(config).to_text()
    }

    fn toml(&self, config: &Config) -> toml::Value {
        (self.get)(config).to_toml()
    }

    fn check(&self, config: &Config) -> Result<(), &'static str> {
        (self.check)((self.get)(config))
    }

    fn switch(&self) -> bool {
        T::SWITCH
    }

    #[cfg(test)]
    fn variant(&self, config: &Config, n: u32) -> (String, toml::Value) {
        let v = (self.get)(config).variant(n);
        (v.to_text(), v.to_toml())
    }
}

/// Defines [`Config`], its groups and [`all`] from the table of settings.
macro_rules! settings {
    (
        $(#[doc = $config_doc:literal])*
        pub struct Config {
            $(
                $(#[doc = $doc:literal])+
                $field:ident: $ty:ty = $default:expr;
                    $value_name:literal, $help:literal, $check:path;
            )*
        }
        $(
            $(#[doc = $group_doc:literal])+
            $group:ident: $group_ty:ident {
                $(
                    $(#[doc = $sub_doc:literal])+
                    $sub:ident: $sub_ty:ty = $sub_default:expr;
                        $sub_value_name:literal, $sub_help:literal, $sub_check:path;
                )*
            }
        )*
    ) => {
        $(#[doc = $config_doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct Config {
            $($(#[doc = $doc])+ pub $field: $ty,)*
            $($(#[doc = $group_doc])+ pub $group: $group_ty,)*
        }

        impl Default for Config {
            fn default() -> Self {
                Self {
                    $($field: $default,)*
                    $($group: $group_ty::default(),)*
                }
            }
        }

        $(
            #[doc = concat!(
                "The settings under `[", stringify!($group), "]` in the settings file, named `",
                stringify!($group), "_` and the field as flags and variables."
            )]
            #[derive(Clone, Debug, PartialEq)]
            pub struct $group_ty {
                $($(#[doc = $sub_doc])+ pub $sub: $sub_ty,)*
            }

            impl Default for $group_ty {
                fn default() -> Self {
                    Self { $($sub: $sub_default,)* }
                }
            }
        )*

        /// Every setting by name, in the order of `--help`.
        pub const SETTINGS: &[&str] = &[
            $(stringify!($field),)*
            $($(concat!(stringify!($group), "_", stringify!($sub)),)*)*
        ];

        /// Every setting, in the order of `--help` and the documentation.
        pub(crate) fn all() -> Vec<Setting> {
            vec![
                $(Setting {
                    name: stringify!($field),
                    table: None,
                    key: stringify!($field),
                    value_name: $value_name,
                    help: $help,
                    doc: concat!($($doc, "\n"),+),
                    field: Box::new(Field::<$ty> {
                        get: |c| &c.$field,
                        get_mut: |c| &mut c.$field,
                        check: $check,
                    }),
                },)*
                $($(Setting {
                    name: concat!(stringify!($group), "_", stringify!($sub)),
                    table: Some(stringify!($group)),
                    key: stringify!($sub),
                    value_name: $sub_value_name,
                    help: $sub_help,
                    doc: concat!($($sub_doc, "\n"),+),
                    field: Box::new(Field::<$sub_ty> {
                        get: |c| &c.$group.$sub,
                        get_mut: |c| &mut c.$group.$sub,
                        check: $sub_check,
                    }),
                },)*)*
            ]
        }
    };
}

// Each entry: doc comment (docs/OPERATIONS.md's table and the field's rustdoc), then
// `field: Type = default;` and `"VALUE NAME", "help line (unit)", check;`.
settings! {
    /// The relay's settings, with concrete values.
    pub struct Config {
        /// Database, certificate and keys.
        data_dir: PathBuf = PathBuf::from("./hush-data");
            "DIR", "Directory of the database and TLS identity", some_path;
        /// QUIC address (UDP).
        listen: SocketAddr = SocketAddr::from(([0u16; 8], 4433));
            "ADDR", "QUIC listen address (UDP)", any;
        /// TLS 1.3 over TCP, for networks that block UDP (docs/RELAY_PROTOCOL.md §17): `same`
        /// (the address and port number of `listen`, over TCP), another address, or `off`.
        tcp_listen: TcpListen = TcpListen::Same;
            "ADDR|same|off", "TLS-over-TCP listen address, \"same\" (listen's, over TCP) or \"off\"", any;
        /// `/metrics` and `/health` (TCP), or `off`.
        metrics_listen: Option<SocketAddr> = Some(SocketAddr::from(([127, 0, 0, 1], 9464)));
            "ADDR|off", "Metrics listen address (TCP), or \"off\"", any;
        /// `sled`, `redis` (a Redis Cluster shared by several relay nodes: `redis_nodes`), or
        /// `memory` (lost on restart; for tests).
        store: StoreKind = StoreKind::Sled;
            "KIND", "Storage backend: sled, redis (a Redis Cluster) or memory (lost on restart)", any;
        /// With `store = redis`: some of the cluster's nodes (comma-separated `host:port`); the
        /// others are discovered. Every relay node of a deployment names the same cluster.
        redis_nodes: Vec<String> = Vec::new();
            "NODES", "Comma-separated Redis Cluster nodes (host:port), for store = redis", redis_nodes;
        /// With `store = redis`: put before every key, so that several deployments (or tests)
        /// can share one cluster. No `{` or `}`.
        redis_prefix: String = "hush:".into();
            "PREFIX", "Prefix of every Redis key", key_prefix;
        /// With `store = redis`: replicas of each primary that must have a write before the
        /// relay acknowledges it (`WAIT`; 0 for a cluster without replicas). See
        /// docs/OPERATIONS.md for what each choice can lose.
        redis_wait_replicas: u32 = 1;
            "N", "Replicas that must have a write before it is acknowledged (count)", any;
        /// With `store = redis`: how long waiting for the replicas may take before the write is
        /// reported as failed (the client retries it).
        redis_wait_timeout_ms: u64 = 1000;
            "MS", "Time the replicas may take to confirm a write (ms)", positive;
        /// With `store = redis`: threads applying store operations side by side, each waiting
        /// for its round trip to the cluster (a connection's operations always share one, so
        /// they keep their order). More overlap more round trips and share more of each
        /// primary's disk syncs.
        redis_writer_lanes: u32 = 64;
            "N", "Threads applying store operations to Redis side by side (count)", positive;
        /// Names in a newly generated certificate (comma-separated).
        cert_names: Vec<String> = vec!["localhost".into()];
            "NAMES", "Comma-separated names in a newly generated certificate", cert_names;
        /// Connections refused beyond this.
        max_connections: u32 = 10_000;
            "N", "Open connections at most (count)", positive;
        /// Connections from one source address block (see `block_prefix_v4`/`_v6`); beyond it a
        /// new connection is closed right after its handshake with close code 5
        /// (`TOO_MANY_CONNECTIONS`). Raise it for a relay behind a NAT or proxy that many clients
        /// share, or for load tests from one host.
        max_connections_per_block: u32 = 1024;
            "N", "Open connections from one source address block at most (count)", positive;
        /// Authenticated connections of one account (all its devices); `Authenticate` beyond it
        /// gets `TOO_MANY_CONNECTIONS`.
        max_connections_per_account: u32 = 32;
            "N", "Authenticated connections of one account at most (count)", positive;
        /// Leading bits of an IPv4 source address that make its address block (32: each address
        /// on its own).
        block_prefix_v4: u8 = 24;
            "BITS", "Bits of an IPv4 source address that make its address block (0-32)", v4_bits;
        /// Leading bits of an IPv6 source address that make its address block (a /48 is what one
        /// site usually gets).
        block_prefix_v6: u8 = 48;
            "BITS", "Bits of an IPv6 source address that make its address block (0-128)", v6_bits;
        /// Device-link messages held at once; beyond it a link gets `LINK_TABLE_FULL`.
        max_pending_links: u32 = 10_000;
            "N", "Pending device links held at once, in all (count)", positive;
        /// Device-link messages held at once for one source address block; beyond it
        /// `RATE_LIMITED` until one of the block's links goes.
        max_pending_links_per_block: u32 = 16;
            "N", "Pending device links held at once per source address block (count)", positive;
        /// A frame on the control stream must arrive whole within this plus its length at
        /// `frame_read_min_bytes_per_sec`, counted from its first byte, or the connection is
        /// closed (code 4).
        frame_read_timeout_ms: u64 = 10_000;
            "MS",
            "Time a control-stream frame may take to arrive, plus its length at the minimum rate (ms)",
            positive;
        /// The slowest rate a control-stream frame may arrive at (a 1 MiB frame gets 10 s + 64 s).
        frame_read_min_bytes_per_sec: u64 = 16 * 1024;
            "BYTES", "Slowest rate a control-stream frame may arrive at (bytes per second)", positive;
        /// Above this many open connections, new clients must pass a QUIC address validation
        /// (Retry) first (0: always).
        retry_under_load_connections: u32 = 2000;
            "N",
            "Require QUIC address validation above this many connections (count, 0 = always)",
            any;
        /// Idle connections are closed; clients send a keep-alive after 2 s without traffic and
        /// give a silent relay up within 8 s (so 10,000 idle clients cost about 5,000 small
        /// packets per second each way).
        idle_timeout_ms: u64 = 60_000;
            "MS", "Close a connection idle this long (ms)", positive;
        /// Largest frame on a stream; bigger ones close the connection.
        max_frame_bytes: usize = 1024 * 1024;
            "BYTES", "Largest frame on a stream (bytes)", positive;
        /// Largest envelope body (at most `max_frame_bytes`).
        max_envelope_bytes: usize = 64 * 1024;
            "BYTES", "Largest envelope body (bytes)", positive;
        /// Recipient devices in one send.
        max_envelopes_per_send: usize = 1200;
            "N", "Envelopes in one send at most (count)", positive;
        /// Devices on one account's list.
        max_devices_per_account: u32 = 16;
            "N", "Devices per account at most (count)", positive;
        /// Unacknowledged envelopes are deleted after this.
        mailbox_ttl_ms: u64 = 30 * DAY_MS;
            "MS", "Delete queued envelopes after this long (ms)", positive;
        /// Envelopes queued per device; a device beyond it is left out of a send
        /// (`SendResult.full_devices`), and a send none of whose devices has room gets
        /// `QUEUE_FULL`.
        max_queue_len: usize = 10_000;
            "N", "Envelopes queued per device at most (count)", positive;
        /// Bytes queued per device (each envelope counts its body plus 128); as `max_queue_len`.
        max_queue_bytes: u64 = 128 * 1024 * 1024;
            "BYTES",
            "Bytes queued per device at most, body plus 128 per envelope (bytes)",
            positive;
        /// Envelopes strangers may have in one device's queue, each kind together: sends let in
        /// as introductions (no delivery token) or because the device accepts anyone (the relay
        /// does not know senders: envelopes are sealed). Past it that device is left out for
        /// them (a send reaching no device gets `SENDER_QUOTA`), so strangers filling a queue do
        /// not stop the device's contacts, whose sends carry its token.
        max_queue_len_per_sender: usize = 1000;
            "N", "Envelopes queued per device from strangers (introductions, or anyone) at most (count)", positive;
        /// The same share in bytes.
        max_queue_bytes_per_sender: u64 = 16 * 1024 * 1024;
            "BYTES",
            "Bytes queued per device from strangers (introductions, or anyone) at most (bytes)",
            positive;
        /// Bytes queued for all devices of one account; a send that would go over gets
        /// `MAILBOX_FULL` (nothing of it is queued).
        max_account_mailbox_bytes: u64 = 512 * 1024 * 1024;
            "BYTES", "Bytes queued for all devices of one account at most (bytes)", positive;
        /// Bytes queued in all mailboxes of the relay; a send that would go over gets
        /// `RELAY_FULL` (size the disk for it, plus sled's overhead).
        max_mailbox_bytes: u64 = 16 * 1024 * 1024 * 1024;
            "BYTES", "Bytes queued in all mailboxes at most (bytes)", positive;
        /// How often expired envelopes and blobs are deleted.
        sweep_interval_ms: u64 = 60_000;
            "MS", "Interval of the expiry sweep (ms)", positive;
        /// Most store operations the writer applies before handing them to one flush (group
        /// commit; at most 4096).
        flush_batch_max: usize = 1024;
            "N", "Sends made durable by one flush at most (group commit; count)", positive;
        /// Largest attachment.
        blob_max_bytes: u64 = 100 * 1024 * 1024;
            "BYTES", "Largest blob (bytes)", positive;
        /// Attachments are deleted after this.
        blob_ttl_ms: u64 = 30 * DAY_MS;
            "MS", "Delete blobs after this long (ms)", positive;
        /// Attachment bytes one account may have stored (declared sizes, uploads in progress
        /// included); beyond, uploads get `BLOB_QUOTA_EXCEEDED` until its blobs expire.
        blob_account_max_bytes: u64 = 2 << 30;
            "BYTES", "Blob storage one account may use at once (bytes)", positive;
        /// Attachment bytes the relay stores, all accounts together (`BLOB_QUOTA_EXCEEDED`
        /// beyond); keep it below the free space of the disk holding the data directory.
        blob_total_max_bytes: u64 = 100 << 30;
            "BYTES", "Blob storage of the relay, all accounts together (bytes)", positive;
        /// A blob stream whose request frame is not complete by then is reset (code 2).
        blob_request_timeout_ms: u64 = 10_000;
            "MS", "Time a blob stream has to send its request frame (ms)", positive;
        /// Each 64 KiB of a blob upload must arrive, and each 64 KiB of a download be taken by
        /// the client, within this; otherwise the stream is reset (code 2) and an upload
        /// deleted.
        blob_chunk_timeout_ms: u64 = 30_000;
            "MS", "Time one 64 KiB chunk of a blob upload or download may take (ms)", positive;
        /// Bytes of group log entries the relay stores, all logs together (group logs are kept
        /// for good: RELAY_PROTOCOL.md §15); beyond, appends get `RELAY_FULL`. Keep it below the
        /// free space of the disk holding the data directory (or of the Redis Cluster).
        group_log_total_max_bytes: u64 = 16 << 30;
            "BYTES", "Group log storage of the relay, all logs together (bytes)", positive;
        /// Memory sled may use to cache the database (sled's own default is 1 GiB); raise it for
        /// many queued envelopes on a host with memory to spare.
        sled_cache_bytes: u64 = 64 << 20;
            "BYTES", "Memory sled may use to cache the database (bytes)", positive;
        /// Log filter (`tracing` syntax, e.g. `hush_relay=debug`).
        log: String = "info".into();
            "FILTER", "Log filter, e.g. \"info\" or \"hush_relay=debug\"", some_text;
    }

    /// Rate limits: token buckets of `per_second` and `burst`, written `PER_SECOND/BURST` as
    /// flags and variables (`--rate-sends 200/400`).
    rate: RateLimits {
        /// Sends and ephemeral sends per device.
        sends: RateLimit = RateLimit::new(200.0, 400);
            "RATE/BURST", "Sends per device (per second/burst)", rate;
        /// Bundle and device-list fetches and username lookups per device.
        prekey_fetches: RateLimit = RateLimit::new(20.0, 100);
            "RATE/BURST", "Pre-key fetches per device (per second/burst)", rate;
        /// Account creations per source IP address.
        account_creations: RateLimit = RateLimit::new(1.0, 10);
            "RATE/BURST", "Account creations per source IP (per second/burst)", rate;
        /// Pre-key uploads, device-list publications, push registrations, username claims and
        /// releases per device.
        uploads: RateLimit = RateLimit::new(10.0, 20);
            "RATE/BURST", "Key and device-list uploads per device (per second/burst)", rate;
        /// Attachment uploads begun per device.
        blob_uploads: RateLimit = RateLimit::new(2.0, 10);
            "RATE/BURST", "Blob uploads per device (per second/burst)", rate;
        /// Sends per account, all its devices together.
        account_sends: RateLimit = RateLimit::new(400.0, 800);
            "RATE/BURST", "Sends per account, all devices together (per second/burst)", rate;
        /// Bundle and device-list fetches and username lookups per account, all its devices
        /// together.
        account_prekey_fetches: RateLimit = RateLimit::new(40.0, 200);
            "RATE/BURST",
            "Pre-key fetches per account, all devices together (per second/burst)",
            rate;
        /// Uploads per account, all its devices together.
        account_uploads: RateLimit = RateLimit::new(20.0, 40);
            "RATE/BURST",
            "Key and device-list uploads per account, all devices together (per second/burst)",
            rate;
        /// One-time pre-keys handed out per target device; past it bundles come without
        /// one-time keys (signed pre-key and last-resort ML-KEM key only), so draining a device
        /// is slow but no one is denied a session.
        one_time_keys_per_target: RateLimit = RateLimit::new(0.05, 30);
            "RATE/BURST",
            "One-time pre-keys handed out per target device; past it bundles come without (per second/burst)",
            rate;
        /// One-time pre-keys handed out per (requesting account, target account).
        one_time_keys_per_pair: RateLimit = RateLimit::new(0.001, 3);
            "RATE/BURST",
            "One-time pre-keys handed out per requesting account and target account (per second/burst)",
            rate;
        /// One-time pre-keys handed out per requesting account over all targets.
        one_time_keys_per_requester: RateLimit = RateLimit::new(1.0, 200);
            "RATE/BURST",
            "One-time pre-keys handed out per requesting account over all targets (per second/burst)",
            rate;
        /// Group log appends per device, or per source address block on an anonymous connection.
        group_log_appends: RateLimit = RateLimit::new(2.0, 20);
            "RATE/BURST",
            "Group log appends per device or anonymous address block (per second/burst)",
            rate;
        /// Group log reads per device, or per source address block on an anonymous connection.
        group_log_reads: RateLimit = RateLimit::new(20.0, 100);
            "RATE/BURST",
            "Group log reads per device or anonymous address block (per second/burst)",
            rate;
        /// Downloads of one blob, everyone together.
        blob_downloads: RateLimit = RateLimit::new(10.0, 100);
            "RATE/BURST", "Downloads of one blob, everyone together (per second/burst)", rate;
        /// Blob downloads per downloading account, all its devices together.
        account_blob_downloads: RateLimit = RateLimit::new(20.0, 200);
            "RATE/BURST",
            "Blob downloads per account, all devices together (per second/burst)",
            rate;
        /// MiB of blobs downloaded per account (MiB per second / burst MiB; a download costs
        /// its size; the burst must be at least `blob_max_bytes`).
        account_blob_download_mib: RateLimit = RateLimit::new(10.0, 2048);
            "RATE/BURST",
            "Blob MiB downloaded per account, all devices together (MiB per second/burst)",
            rate;
    }

    /// Push delivery.
    push: PushConfig {
        /// Allow `http://` push endpoints and endpoints on non-public addresses (testing only;
        /// by default wake-ups go to public addresses only).
        allow_plain_http: bool = false;
            "BOOL", "Allow plain http:// push endpoints, for testing (true/false)", any;
        /// Bound on one push POST.
        timeout_ms: u64 = 10_000;
            "MS", "Timeout of one push request (ms)", positive;
        /// The relay's VAPID key (RFC 8292), which signs every WebPush wake-up: a PKCS#8 ECDSA
        /// P-256 key file, made (mode 0600) on first start when missing; a relative path is
        /// under `data_dir`. Relay nodes sharing a Redis Cluster should all hold the same key
        /// (copy the file), since a push service may tie a subscription to one key.
        vapid_key: PathBuf = PathBuf::from("vapid.key");
            "FILE", "VAPID private key file (PKCS#8), under data_dir unless absolute", some_path;
        /// The contact in every VAPID token (`sub`): `mailto:` and an address, or an `https://`
        /// URL, where a push service's operator can reach the relay's. Empty leaves it out;
        /// some push services then refuse the wake-ups.
        vapid_subject: VapidSubject = VapidSubject::default();
            "URI", "VAPID contact, mailto: or https: (empty: none)", any;
    }
}
