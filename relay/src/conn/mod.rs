//! One client connection.
//!
//! [`ConnState`] is the protocol of one connection without any I/O, in the manner of
//! quinn-proto under quinn: bytes read from the control stream, messages from the router and the
//! store writer, and timer expiries go in, with the time passed in; frames to write, operations
//! for the writer and a close decision come out. It is unit-tested over frames and a fake clock
//! (`tests.rs`). The async task around it ([`shell`]) only moves bytes and messages.
//!
//! **Pipelining.** Requests are handled in arrival order, and each is answered as soon as its
//! answer exists: reads at once, writes once the store writer has made them durable. So answers
//! may leave in another order than the requests came (request ids tag them), and a send waiting
//! for its flush holds up nothing behind it. At most [`limits::MAX_IN_FLIGHT`] requests wait for
//! the writer; past that the connection stops reading (QUIC flow control then holds the client
//! back). Requests that change account state (account creation, device-list publication, pre-key
//! upload, push registration, username claims) and group log appends are barriers: later
//! requests of the connection wait until the writer has *applied* them (not until they are
//! durable), so that, e.g., an authentication right after a pipelined account creation sees the
//! account, and a group log read right after an append sees the entry.
//!
//! **Delivery.** After authentication the connection sends what is queued for the device from the
//! store, in sequence order, then `QueueDrained`. A new envelope reaches it from the writer as a
//! [`Live::Envelope`] (before the flush): if it directly follows what the connection has sent, it
//! is written from memory; otherwise (a gap, a full output buffer, or catch-up still running) the
//! connection reads the store again after the last sequence number it sent. So each envelope is
//! sent once per connection, in queue order, and none is lost when live events are dropped.
//!
//! **Output.** Frames are encoded into one buffer; the shell writes it with one call per wake-up.
//! Deliveries stop adding to it past [`limits::CONNECTION_OUT_BYTES`] (mail waits in the store),
//! answers and control frames are bounded by the in-flight cap.

mod auth;
mod directory;
mod group_log;
mod keys;
mod lenient;
mod mail;
mod sealed;
mod shell;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hush_proto::relay_api::{
    self as api, ClientFrame, ErrorCode, ServerFrame, client_frame, server_frame,
};
use prost::Message;
use tokio::sync::mpsc;

pub(crate) use shell::{serve, serve_tcp};

use crate::admit::{AccountSlot, LinkGuard};
use crate::limits::{self, close};
use crate::ops::Timeout;
use crate::router::{Live, Pending, ToConn};
use crate::shared::Relay;
use crate::store::{DeviceId, StoreError};
use crate::verify::VerifyError;
use crate::writer::{Op, Settle};

/// A refused request: the error frame it gets.
#[derive(Debug)]
pub struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) retry_after_ms: u64,
    pub(crate) missing: Vec<u32>,
    pub(crate) extra: Vec<u32>,
    /// `LOG_CONFLICT`: the group log's head.
    pub(crate) log_head: u64,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: 0,
            missing: Vec::new(),
            extra: Vec::new(),
            log_head: 0,
        }
    }

    pub(crate) fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = ms;
        self
    }

    pub(crate) fn rate(wait: Duration) -> Self {
        let mut r = Self::new(ErrorCode::RateLimited, "rate limited");
        r.retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        r
    }

    /// The error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub(crate) fn to_frame(&self) -> api::Error {
        api::Error {
            code: self.code.into(),
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
            missing_devices: self.missing.clone(),
            extra_devices: self.extra.clone(),
            log_head: self.log_head,
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AccountExists => Self::new(ErrorCode::AccountExists, "account exists"),
            StoreError::QueueFull(d) => Self::new(
                ErrorCode::QueueFull,
                format!("the queue of device {} is full", d.device),
            )
            .retry_after(limits::MAILBOX_FULL_RETRY_AFTER_MS),
            StoreError::SenderQuota(d) => Self::new(
                ErrorCode::SenderQuota,
                format!(
                    "this sender's share of the queue of device {} is used up",
                    d.device
                ),
            )
            .retry_after(limits::MAILBOX_FULL_RETRY_AFTER_MS),
            StoreError::MailboxFull => Self::new(
                ErrorCode::MailboxFull,
                "the recipient account's mailbox is full",
            )
            .retry_after(limits::MAILBOX_FULL_RETRY_AFTER_MS),
            StoreError::RelayFull => {
                Self::new(ErrorCode::RelayFull, "the relay's mailbox storage is full")
                    .retry_after(limits::MAILBOX_FULL_RETRY_AFTER_MS)
            }
            StoreError::UsernameTaken => Self::new(
                ErrorCode::UsernameTaken,
                "the username is held by another account",
            ),
            StoreError::StaleDeviceList { stored, offered } => Self::new(
                ErrorCode::StaleDeviceList,
                format!("device list version {offered} is not newer than {stored}"),
            ),
            StoreError::GroupLogFull => Self::new(
                ErrorCode::TooLarge,
                "the group log is at its cap of entries or bytes",
            ),
            StoreError::GroupLogsFull => Self::new(
                ErrorCode::RelayFull,
                "the relay's group log storage is full",
            )
            .retry_after(limits::GROUP_LOGS_FULL_RETRY_AFTER_MS),
            other => {
                tracing::error!(error = %other, "storage failure");
                Self::new(ErrorCode::Internal, "storage failure, retry later")
            }
        }
    }
}

impl From<VerifyError> for Refusal {
    fn from(e: VerifyError) -> Self {
        let code = match e {
            VerifyError::BadSignature(_)
            | VerifyError::MissingConsent(_)
            | VerifyError::BadConsent(_) => ErrorCode::BadSignature,
            VerifyError::WrongAccount => ErrorCode::Forbidden,
            VerifyError::TooManyDevices(..) => ErrorCode::TooManyDevices,
            VerifyError::Malformed(_) | VerifyError::InvalidKey(_) => ErrorCode::Malformed,
        };
        Self::new(code, e.to_string())
    }
}

pub(crate) fn arr<const N: usize>(b: &[u8], what: &str) -> Result<[u8; N], Refusal> {
    b.try_into()
        .map_err(|_| Refusal::new(ErrorCode::Malformed, format!("{what} must be {N} bytes")))
}

/// The time, as the state machine sees it.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic time (timers, rate limits).
    pub at: Instant,
    /// Wall-clock milliseconds since the Unix epoch (acceptance times, expiries).
    pub wall_ms: u64,
}

/// Where a connection is in authentication.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Nothing asked yet (or a challenge was used up).
    Open,
    /// A challenge was given; good for one attempt.
    Challenged([u8; limits::CHALLENGE_LEN]),
    /// Authenticated as this device.
    Device(DeviceId),
    /// Declared anonymous (`Anonymous`): sealed sends, public reads and group logs only, never
    /// authenticated (`sealed.rs`).
    Anonymous,
}

/// What a handled request produced.
enum Reply {
    /// Answer at once.
    Now(server_frame::Kind),
    /// The writer answers (an operation was submitted).
    Later,
}

/// Read buffers above this are released once empty.
const KEEP_BUFFER: usize = 16 * 1024;

/// One connection's protocol state (see the module documentation).
pub struct ConnState {
    id: u64,
    remote: IpAddr,
    exporter: [u8; limits::EXPORTER_LEN],
    phase: Phase,
    auth_failures: u32,
    auth_deadline: Instant,
    /// Bytes read and not yet taken as frames.
    inbuf: Vec<u8>,
    /// Encoded frames waiting to be written.
    out: Vec<u8>,
    /// Requests handed to the writer and not yet answered, by request id.
    in_flight: HashSet<u64>,
    /// A request that later ones wait for (until applied).
    barrier: Option<u64>,
    /// Operations for the writer, taken by the shell.
    ops: Vec<Op>,
    /// This connection's own queue (the router and the writer hold clones).
    tx: mpsc::UnboundedSender<ToConn>,
    pending: Arc<Pending>,
    /// Highest sequence number sent on this connection.
    last_sent: u64,
    /// The first pass over the stored queue is done (`QueueDrained` was sent).
    caught_up: bool,
    /// The store holds mail for this connection that it has not sent.
    need_fetch: bool,
    draining: bool,
    close: Option<(u32, &'static [u8])>,
    /// Past this, a closing connection stops waiting for its output and answers.
    close_deadline: Option<Instant>,
    /// The latest time passed in.
    now: Instant,
    /// Since when the incomplete frame at the head of `inbuf` has been awaited (while the
    /// connection reads; `None` when there is none or reading is held back).
    frame_since: Option<Instant>,
    /// When that frame must be complete.
    frame_deadline: Option<Instant>,
    /// The device link this connection left, pending until taken or until the connection ends.
    link: Option<LinkGuard>,
    /// This connection counted against its account once authenticated.
    account_slot: Option<AccountSlot>,
}

impl ConnState {
    /// A new connection from `remote` whose TLS exporter (for authentication) is `exporter`;
    /// returns its state and the receiving end of its queue (for the shell).
    pub fn new(
        id: u64,
        remote: IpAddr,
        exporter: [u8; limits::EXPORTER_LEN],
        now: Now,
    ) -> (Self, mpsc::UnboundedReceiver<ToConn>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                id,
                remote,
                exporter,
                phase: Phase::Open,
                auth_failures: 0,
                auth_deadline: now.at + Duration::from_millis(limits::AUTH_TIMEOUT_MS),
                inbuf: Vec::new(),
                out: Vec::new(),
                in_flight: HashSet::new(),
                barrier: None,
                ops: Vec::new(),
                tx,
                pending: Arc::new(Pending::default()),
                last_sent: 0,
                caught_up: false,
                need_fetch: false,
                draining: false,
                close: None,
                close_deadline: None,
                now: now.at,
                frame_since: None,
                frame_deadline: None,
                link: None,
                account_slot: None,
            },
            rx,
        )
    }

    /// The authenticated device.
    pub fn device(&self) -> Option<DeviceId> {
        match self.phase {
            Phase::Device(d) => Some(d),
            _ => None,
        }
    }

    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes read from the control stream.
    pub fn receive(&mut self, relay: &Arc<Relay>, data: &[u8], now: Now) {
        self.now = self.now.max(now.at);
        self.inbuf.extend_from_slice(data);
        self.pump(relay, now);
    }

    /// A message from the router or the writer.
    pub fn handle_message(&mut self, relay: &Arc<Relay>, msg: ToConn, now: Now) {
        self.now = self.now.max(now.at);
        match msg {
            ToConn::Applied(rid) => {
                if self.barrier == Some(rid) {
                    self.barrier = None;
                }
            }
            ToConn::Answer(rid, answer) => {
                self.in_flight.remove(&rid);
                let kind = match answer {
                    Ok(k) => k,
                    Err(r) => self.refusal(relay, &r),
                };
                self.push(rid, kind);
            }
            ToConn::Live(ev) => self.event(relay, ev),
        }
        self.pump(relay, now);
    }

    /// The client finished its side of the control stream: answer what is in flight, then close
    /// (a protocol violation if it stopped inside a frame).
    pub fn peer_finished(&mut self, relay: &Relay) {
        if self.inbuf.is_empty() {
            self.finish(close::NORMAL, b"");
        } else {
            self.inbuf.clear();
            self.bad_frame(
                relay,
                ErrorCode::Malformed,
                "stream ended inside a frame".into(),
            );
        }
    }

    /// The relay is draining: tell the client to reconnect, finish what is in flight, close.
    pub fn drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.push(0, server_frame::Kind::Drain(api::Drain {}));
        self.finish(close::DRAINING, b"relay draining");
    }

    /// When [`ConnState::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.close, self.phase) {
            (Some(_), _) => self.close_deadline,
            (None, Phase::Device(_) | Phase::Anonymous) => self.frame_deadline,
            (None, _) => Some(
                self.frame_deadline
                    .map_or(self.auth_deadline, |f| f.min(self.auth_deadline)),
            ),
        }
    }

    /// Timers: the authentication deadline, the deadline of a frame being read, and the bound
    /// on closing.
    pub fn handle_timeout(&mut self, relay: &Relay, now: Now) {
        self.now = self.now.max(now.at);
        if self.close.is_none()
            && matches!(self.phase, Phase::Open | Phase::Challenged(_))
            && now.at >= self.auth_deadline
        {
            relay.metrics.timeouts.inc(Timeout::Auth);
            tracing::info!("connection closed: not authenticated in time");
            self.finish(close::PROTOCOL, b"authentication timed out");
        }
        if self.close.is_none() && self.frame_deadline.is_some_and(|d| now.at >= d) {
            relay.metrics.timeouts.inc(Timeout::Frame);
            tracing::info!("connection closed: a frame did not arrive within its deadline");
            self.inbuf = Vec::new();
            self.frame_since = None;
            self.frame_deadline = None;
            self.finish(close::PROTOCOL, b"frame timed out");
        }
        if self.close_deadline.is_some_and(|d| now.at >= d) {
            // Give up on what is unwritten or unanswered.
            self.out.clear();
            self.in_flight.clear();
        }
    }

    /// Whether the shell should read more from the control stream.
    pub fn wants_read(&self, max_frame: usize) -> bool {
        self.close.is_none() && self.inbuf.len() <= max_frame.saturating_add(4) && self.can_handle()
    }

    fn can_handle(&self) -> bool {
        self.close.is_none()
            && self.barrier.is_none()
            && self.in_flight.len() < limits::MAX_IN_FLIGHT
            && self.out.len() < limits::CONNECTION_OUT_BYTES
    }

    /// Whether frames wait to be written.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Moves the frames waiting to be written into `buf` (which must be empty), to be written
    /// in one go.
    pub fn take_output(&mut self, buf: &mut Vec<u8>) {
        std::mem::swap(&mut self.out, buf);
    }

    /// Operations for the writer, in order.
    pub fn take_ops(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    /// Requests waiting for the writer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The close code and reason once the connection is done: closing was decided, everything
    /// in flight was answered and every frame handed out (or the close deadline passed).
    pub fn finished(&self) -> Option<(u32, &'static [u8])> {
        self.close
            .filter(|_| self.out.is_empty() && self.in_flight.is_empty() && self.ops.is_empty())
    }

    /// Decides to close with `code` (the first decision stands).
    fn finish(&mut self, code: u32, reason: &'static [u8]) {
        if self.close.is_none() {
            self.close = Some((code, reason));
            self.close_deadline = Some(self.now + Duration::from_millis(limits::WRITE_TIMEOUT_MS));
        }
    }

    /// Handles buffered frames while nothing holds them back, then sends stored mail if some is
    /// owed.
    pub fn pump(&mut self, relay: &Arc<Relay>, now: Now) {
        self.now = self.now.max(now.at);
        let mut taken = 0usize;
        while self.can_handle() {
            let rest = self.inbuf.get(taken..).unwrap_or_default();
            let Some(header) = rest.get(..limits::FRAME_HEADER) else {
                break;
            };
            let mut len = [0u8; limits::FRAME_HEADER];
            len.copy_from_slice(header);
            let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
            let cap = relay.cfg.max_frame_bytes;
            if len > cap {
                self.bad_frame(
                    relay,
                    ErrorCode::TooLarge,
                    format!("frame of {len} bytes is over the cap of {cap}"),
                );
                break;
            }
            let Some(body) = rest.get(limits::FRAME_HEADER..limits::FRAME_HEADER + len) else {
                break;
            };
            let decoded = ClientFrame::decode(body);
            taken += limits::FRAME_HEADER + len;
            match decoded {
                Ok(f) => self.handle(relay, f, now),
                Err(e) => match lenient::text_not_utf8(body) {
                    // A well-formed request whose text is not UTF-8: refused, not a bad frame.
                    Some(rid) => self.refuse_request(
                        relay,
                        rid,
                        Refusal::new(ErrorCode::Malformed, "a text field is not UTF-8"),
                    ),
                    None => {
                        self.bad_frame(
                            relay,
                            ErrorCode::Malformed,
                            format!("malformed frame: {e}"),
                        );
                        break;
                    }
                },
            }
        }
        self.inbuf.drain(..taken.min(self.inbuf.len()));
        if self.inbuf.is_empty() && self.inbuf.capacity() > KEEP_BUFFER {
            self.inbuf = Vec::new();
        }
        self.frame_timer(relay, taken > 0, now);
        if self.need_fetch && self.close.is_none() {
            self.fetch_mail(relay);
        }
    }

    /// Starts, keeps or stops the deadline of the frame at the head of `inbuf`. It runs while
    /// an incomplete frame waits and the connection reads (not while it holds reading back), from
    /// when that frame became the head (`restart`: frames were just taken), and allows
    /// `frame_read_timeout_ms` plus the frame's declared length at `frame_read_min_bytes_per_sec`.
    fn frame_timer(&mut self, relay: &Relay, restart: bool, now: Now) {
        if restart || self.inbuf.is_empty() || !self.can_handle() {
            self.frame_since = None;
            self.frame_deadline = None;
            if self.inbuf.is_empty() || !self.can_handle() {
                return;
            }
        }
        let since = *self.frame_since.get_or_insert(now.at);
        let declared = self
            .inbuf
            .get(..limits::FRAME_HEADER)
            .and_then(|h| <[u8; limits::FRAME_HEADER]>::try_from(h).ok())
            .map_or(0, |h| u64::from(u32::from_be_bytes(h)));
        let rate = relay.cfg.frame_read_min_bytes_per_sec.max(1);
        let allowance = relay
            .cfg
            .frame_read_timeout_ms
            .saturating_add(declared.saturating_mul(1000) / rate);
        self.frame_deadline = Some(since + Duration::from_millis(allowance));
    }

    /// A frame that breaks the protocol: answered with `code` under request id 0, and the
    /// connection closes.
    fn bad_frame(&mut self, relay: &Relay, code: ErrorCode, message: String) {
        tracing::info!(code = ?code, "bad frame; closing the connection");
        let r = Refusal::new(code, message);
        let kind = self.refusal(relay, &r);
        self.push(0, kind);
        self.finish(close::PROTOCOL, b"bad frame");
    }

    /// Refuses request `rid` (which must be usable as an answer's id); the connection stays.
    fn refuse_request(&mut self, relay: &Relay, rid: u64, r: Refusal) {
        if let Err(bad) = self.check_request_id(rid) {
            self.bad_frame(relay, ErrorCode::Malformed, bad.into());
            return;
        }
        let kind = self.refusal(relay, &r);
        self.push(rid, kind);
    }

    /// Request ids are not 0 (the id of unsolicited frames) and not the id of a request still
    /// waiting for its answer.
    fn check_request_id(&self, rid: u64) -> Result<(), &'static str> {
        if rid == 0 {
            return Err("request id 0 is reserved for unsolicited frames");
        }
        if self.in_flight.contains(&rid) {
            return Err("request id of a request still in flight");
        }
        Ok(())
    }

    /// Appends a frame to the output.
    fn push(&mut self, request_id: u64, kind: server_frame::Kind) {
        let f = ServerFrame {
            request_id,
            kind: Some(kind),
        };
        let len = f.encoded_len();
        self.out.reserve(limits::FRAME_HEADER + len);
        self.out
            .extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        f.encode_raw(&mut self.out);
    }

    fn refusal(&self, relay: &Relay, r: &Refusal) -> server_frame::Kind {
        relay.refuse_count(r);
        tracing::debug!(conn = self.id, code = ?r.code, "request refused");
        server_frame::Kind::Error(r.to_frame())
    }

    fn me(&self) -> Result<DeviceId, Refusal> {
        self.device()
            .ok_or_else(|| Refusal::new(ErrorCode::Unauthenticated, "authenticate first"))
    }

    /// Hands `apply` to the writer; its answer (after the flush) goes out under `rid`. A barrier
    /// holds later requests until it is applied.
    fn submit(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        barrier: bool,
        apply: impl FnOnce(&Relay) -> Result<server_frame::Kind, Refusal> + Send + 'static,
    ) {
        let tx = self.tx.clone();
        let r = Arc::clone(relay);
        self.in_flight.insert(rid);
        if barrier {
            self.barrier = Some(rid);
        }
        self.ops.push(Box::new(move || {
            let result = apply(&r);
            if barrier {
                let _ = tx.send(ToConn::Applied(rid));
            }
            match result {
                // Nothing was written: no need to wait for a flush.
                Err(refused) => {
                    let _ = tx.send(ToConn::Answer(rid, Err(refused)));
                    None
                }
                Ok(kind) => Some(Box::new(move |durable: Result<(), StoreError>| {
                    let answer = durable.map(|()| kind).map_err(Refusal::from);
                    let _ = tx.send(ToConn::Answer(rid, answer));
                }) as Settle),
            }
        }));
    }

    /// Handles one request.
    fn handle(&mut self, relay: &Arc<Relay>, f: ClientFrame, now: Now) {
        use client_frame::Kind as K;
        let rid = f.request_id;
        if let Err(bad) = self.check_request_id(rid) {
            self.bad_frame(relay, ErrorCode::Malformed, bad.into());
            return;
        }
        let result = match f.kind {
            None => Err(Refusal::new(
                ErrorCode::UnknownRequest,
                "unknown or empty request",
            )),
            Some(K::Hello(_)) => Ok(Reply::Now(self.hello())),
            Some(K::Authenticate(a)) => {
                let r = self.authenticate(relay, &a);
                match (&r, self.device()) {
                    (Ok(_), Some(d)) => {
                        self.push(rid, server_frame::Kind::Ok(api::Ok {}));
                        self.tell_if_pre_keys_low(relay, &d);
                        return;
                    }
                    // A failed proof counts towards closing the connection; authenticating
                    // twice, a full account and a storage failure do not.
                    (Err(e), _)
                        if matches!(
                            e.code,
                            ErrorCode::AuthFailed | ErrorCode::DeviceRevoked | ErrorCode::Malformed
                        ) =>
                    {
                        relay.metrics.auth_failures.inc();
                        self.auth_failures += 1;
                        tracing::info!(code = ?e.code, "authentication failed");
                    }
                    _ => {}
                }
                r.map(Reply::Now)
            }
            Some(K::CreateAccount(c)) => self.create_account(relay, rid, &c, now),
            Some(K::PublishDeviceList(p)) => self.publish_list(relay, rid, p),
            Some(K::RecoverDeviceList(p)) => self.recover_list(relay, rid, p, now),
            Some(K::FetchDeviceList(q)) => self.fetch_list(relay, &q, now).map(Reply::Now),
            Some(K::UploadPreKeys(u)) => self.upload_pre_keys(relay, rid, u, now),
            Some(K::FetchBundle(b)) => self.fetch_bundle(relay, rid, &b, now),
            Some(K::Send(s)) => self.send(relay, rid, s, now),
            Some(K::Ack(a)) => self.ack(relay, a).map(Reply::Now),
            Some(K::SendEphemeral(e)) => self.ephemeral(relay, e, now).map(Reply::Now),
            Some(K::RegisterPush(p)) => self.register_push(relay, rid, p, now),
            Some(K::Ping(_)) => Ok(Reply::Now(server_frame::Kind::Ok(api::Ok {}))),
            Some(K::PushServerKey(_)) => Self::push_server_key(relay).map(Reply::Now),
            Some(K::ProvisionPut(p)) => self.provision_put(relay, p, now).map(Reply::Now),
            Some(K::ProvisionTake(t)) => self.provision_take(relay, &t, now).map(Reply::Now),
            Some(K::ProvisionOffer(o)) => self.provision_offer(relay, &o, now).map(Reply::Now),
            Some(K::ClaimUsername(u)) => self.claim_username(relay, rid, &u, now),
            Some(K::ReleaseUsername(_)) => self.release_username(relay, rid, now),
            Some(K::LookupUsername(q)) => self.lookup_username(relay, &q, now).map(Reply::Now),
            Some(K::Anonymous(_)) => self.go_anonymous(relay).map(Reply::Now),
            Some(K::SetDeliveryToken(t)) => self.set_delivery_token(relay, rid, &t, now),
            Some(K::GroupLogAppend(a)) => self.group_log_append(relay, rid, a, now),
            Some(K::GroupLogRead(q)) => self.group_log_read(relay, &q, now).map(Reply::Now),
        };
        match result {
            Ok(Reply::Now(kind)) => self.push(rid, kind),
            Ok(Reply::Later) => {}
            Err(r) => {
                let kind = self.refusal(relay, &r);
                self.push(rid, kind);
            }
        }
        if self.auth_failures >= limits::MAX_AUTH_FAILURES && self.close.is_none() {
            tracing::info!("connection closed after repeated authentication failures");
            self.finish(close::PROTOCOL, b"authentication failed");
        }
    }

    /// An event from the router.
    fn event(&mut self, relay: &Arc<Relay>, ev: Live) {
        match ev {
            Live::Mail => {
                self.pending.took_wake();
                if self.device().is_some() {
                    self.need_fetch = true;
                }
            }
            Live::Envelope(fresh) => {
                self.pending.took_event();
                self.offer(relay, *fresh);
            }
            Live::Ephemeral(body) => {
                self.pending.took_event();
                // Lossy by nature: dropped when the client is not keeping up.
                if self.out.len() < limits::CONNECTION_OUT_BYTES && self.close.is_none() {
                    self.push(
                        0,
                        server_frame::Kind::Ephemeral(api::EphemeralDeliver { body: *body }),
                    );
                    relay.metrics.ephemeral_delivered.inc();
                }
            }
            Live::PreKeysLow(one_time, kem) => {
                self.pending.took_event();
                relay.metrics.pre_keys_low_sent.inc();
                self.push(
                    0,
                    server_frame::Kind::PreKeysLow(api::PreKeysLow {
                        one_time_left: one_time,
                        kem_left: kem,
                    }),
                );
            }
            Live::Revoked => {
                self.push(0, server_frame::Kind::Revoked(api::Revoked {}));
                self.finish(close::REVOKED, b"device revoked");
            }
            Live::Replaced => self.finish(close::REPLACED, b"connected elsewhere"),
            Live::Drain => self.drain(),
        }
    }
}
