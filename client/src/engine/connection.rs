//! The connection loop: connect, authenticate, publish pre-keys and the push endpoint, run key
//! upkeep, serve deliveries until the connection ends, then reconnect with backoff.

use crate::conn::RelayConnection;
use crate::error::ClientError;
use crate::profile::{ANYONE_FILE, UPLOADED_FILE};
use hush_proto::relay_api::{self as api, ErrorCode, client_frame, server_frame};
use prost::Message;
use rand::RngExt;
use std::sync::Arc;
use std::time::Duration;

use super::receive::{MAX_WAITING_DELIVERIES, Settlement, Waiting, retry_delay};
use super::{
    CONNECT_WAIT, ConnectionState, Engine, Event, Inner, MAX_BACKOFF, MIN_BACKOFF, now_ms, rng,
};

/// How often key upkeep ([`Device::upkeep`]) runs while connected (it also runs on every
/// connection).
pub(super) const UPKEEP_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Why a served connection ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// Shut down, or this device was revoked.
    Stopped,
    /// The relay asked for the reconnection (it drains).
    Drained,
    /// The app suspended the engine.
    Suspended,
    /// Dial again at once (the network or the liveness changed, or QUIC answers again).
    Redial,
}

/// A connection that is set up: authenticated, pre-keys and push endpoint published, group logs
/// read.
type Established = (
    Arc<RelayConnection>,
    tokio::sync::mpsc::Receiver<server_frame::Kind>,
);

/// Connects, authenticates and publishes pre-keys; `None` if the relay said this device was
/// revoked.
pub(super) async fn establish(inner: &Arc<Inner>) -> Result<Option<Established>, ClientError> {
    let liveness = *inner.liveness.lock().map_err(|_| ClientError::Closed)?;
    // Right after a QUIC probe answered while on TCP: QUIC alone, so that a TCP handshake that
    // happens to be quicker does not win the race again (a failure falls back to both).
    let quic_only = inner
        .quic_only_next
        .swap(false, std::sync::atomic::Ordering::AcqRel);
    let addrs = crate::conn::RelayAddrs {
        quic: inner.relay,
        tcp: (!quic_only).then_some(inner.relay),
    };
    let (conn, events) = RelayConnection::connect_with(addrs, &inner.pin, liveness).await?;
    let conn = Arc::new(conn);
    let (account, device_id) = {
        let d = inner.lock()?;
        (*d.address().account.as_bytes(), d.address().device_id)
    };
    {
        let inner2 = Arc::clone(inner);
        let authenticated = conn
            .authenticate(account, device_id, move |exporter, challenge| {
                inner2
                    .device
                    .lock()
                    .map(|d| d.sign_relay_challenge(exporter, challenge))
                    .unwrap_or([0u8; 64])
            })
            .await;
        match authenticated {
            Err(ClientError::Refused(r))
                if r.code == ErrorCode::DeviceRevoked && inner.was_listed() =>
            {
                tracing::warn!("this device is no longer on its account's list; stopping");
                conn.close();
                inner.revoke();
                return Ok(None);
            }
            r => r?,
        }
    }
    // Rotations due since the last connection first, so that one upload publishes them.
    if let Err(e) = inner.upkeep(&conn, false).await {
        tracing::warn!(error = %e, "key upkeep failed; tried again later");
    }
    inner.upload_pre_keys(&conn).await?;
    inner.publish_delivery_token(&conn).await?;
    if let Some(registration) = super::push::saved_registration(&inner.profile)
        && let Err(e) = conn
            .request(client_frame::Kind::RegisterPush(registration))
            .await
    {
        tracing::warn!(error = %e, "push endpoint not registered again");
    }
    // This account's own list (a linked device learns its siblings here).
    let own = inner.lock()?.address().account;
    if let Err(e) = inner.refresh_list(&conn, &own).await {
        tracing::warn!(error = %e, "own device list not refreshed");
    }
    if let Err(e) = inner.sync_groups_from_siblings(&conn).await {
        tracing::warn!(error = %e, "group logs not requested from the other devices yet");
    }
    // Notices may have been missed while offline: read every group's log.
    if let Err(e) = inner.sync_all_group_logs(&conn).await {
        tracing::warn!(error = %e, "group logs not read");
    }
    Ok(Some((conn, events)))
}

/// The QUIC retry delay while on TCP: the configured period, ±25 %.
fn quic_retry_due(inner: &Inner) -> tokio::time::Instant {
    let every = inner.quic_retry.lock().map_or(super::QUIC_RETRY, |d| *d);
    tokio::time::Instant::now() + every.mul_f64(rng().random_range(0.75..1.25))
}

/// Waits for the QUIC probe under way, if any (forever when there is none).
async fn probe_result(
    probe: &mut Option<std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>>>,
) -> bool {
    match probe {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

/// Ends a connection cleanly: a `Ping` whose answer proves that the relay processed every
/// acknowledgement sent before it (requests are processed in order), so nothing delivered is
/// delivered again; then closes it.
async fn close_cleanly(conn: &RelayConnection) {
    let _ = tokio::time::timeout(
        super::SUSPEND_WAIT,
        conn.request(client_frame::Kind::Ping(api::Ping {})),
    )
    .await;
    conn.close();
}

/// Serves an established connection until it ends.
pub(super) async fn serve(
    inner: &Arc<Inner>,
    conn: Arc<RelayConnection>,
    mut events: tokio::sync::mpsc::Receiver<server_frame::Kind>,
    redial: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<Ended, ClientError> {
    let mut suspended = inner.suspended.subscribe();
    inner
        .drained
        .store(false, std::sync::atomic::Ordering::Release);
    // Online before the connection is published: whoever sees it (`connected`, any call) then
    // reads the state as `Online` too.
    inner.state.send_replace(ConnectionState::Online);
    inner.conn.send_replace(Some(Arc::clone(&conn)));
    inner.emit(Event::Connection(true));
    // Retry requests left from before (PROTOCOL.md §20).
    inner.heal(&conn).await;
    // Deliveries not settled yet (kept at the relay), tried again with backoff.
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut upkeep = tokio::time::interval_at(
        tokio::time::Instant::now() + UPKEEP_INTERVAL,
        UPKEEP_INTERVAL,
    );
    // Over TCP, QUIC is tried again now and then; it takes over once it answers.
    let on_tcp = conn.transport() == crate::conn::Transport::Tcp;
    let mut retry_quic = on_tcp.then(|| quic_retry_due(inner));
    let mut probe: Option<std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>>> = None;
    // The relay said the queue is drained while deliveries still wait for a retry: told once
    // they are settled.
    let mut drain_pending = false;
    let result = loop {
        if drain_pending && waiting.is_empty() {
            drain_pending = false;
            inner.caught_up_now();
        }
        let next_due = waiting.iter().map(|w| w.due).min();
        let heal_due = match inner.lock() {
            Ok(d) => d.next_retry_request_at().map(|at| {
                tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
            }),
            Err(e) => break Err(e),
        };
        let ev = tokio::select! {
            () = inner.shutdown.cancelled() => break Ok(Ended::Stopped),
            () = until(&mut suspended, true) => {
                // Calls made from now on wait for the next connection.
                inner.conn.send_replace(None);
                close_cleanly(&conn).await;
                break Ok(Ended::Suspended);
            }
            _ = redial.changed() => {
                inner.conn.send_replace(None);
                close_cleanly(&conn).await;
                break Ok(Ended::Redial);
            }
            () = sleep_until(retry_quic), if probe.is_none() => {
                retry_quic = None;
                probe = Some(Box::pin(crate::conn::quic_answers(inner.relay, &inner.pin)));
                continue;
            }
            answered = probe_result(&mut probe) => {
                probe = None;
                if answered {
                    tracing::info!("QUIC answers again; leaving TCP");
                    crate::conn::remember_transport(inner.relay, crate::conn::Transport::Quic);
                    inner
                        .quic_only_next
                        .store(true, std::sync::atomic::Ordering::Release);
                    inner.conn.send_replace(None);
                    close_cleanly(&conn).await;
                    break Ok(Ended::Redial);
                }
                retry_quic = Some(quic_retry_due(inner));
                continue;
            }
            () = sleep_until(heal_due) => {
                inner.heal(&conn).await;
                continue;
            }
            () = sleep_until(next_due) => {
                let now = tokio::time::Instant::now();
                let (due, later): (Vec<Waiting>, Vec<Waiting>) =
                    waiting.drain(..).partition(|w| w.due <= now);
                waiting = later;
                for mut w in due {
                    match inner.deliver(&conn, &w.deliver, false).await {
                        Settlement::Settled => ack(&conn, w.deliver.seq),
                        Settlement::Retry => {
                            w.attempt = w.attempt.saturating_add(1);
                            w.due = tokio::time::Instant::now() + retry_delay(w.attempt);
                            waiting.push(w);
                        }
                    }
                }
                continue;
            }
            _ = upkeep.tick() => {
                if let Err(e) = inner.upkeep(&conn, true).await {
                    tracing::warn!(error = %e, "key upkeep failed; tried again later");
                }
                continue;
            }
            ev = events.recv() => ev,
        };
        match ev {
            None => break Err(ClientError::Disconnected),
            Some(server_frame::Kind::Deliver(d)) => {
                match inner.deliver(&conn, &d, false).await {
                    // Committed by client-core, a duplicate, or rejected for good: the relay may
                    // forget it.
                    Settlement::Settled => ack(&conn, d.seq),
                    // Not processed: it stays at the relay and is tried again here.
                    Settlement::Retry => {
                        waiting.push(Waiting {
                            deliver: d,
                            attempt: 0,
                            due: tokio::time::Instant::now() + retry_delay(0),
                        });
                        if waiting.len() > MAX_WAITING_DELIVERIES {
                            // Let the relay hold them: reconnecting delivers them again.
                            tracing::warn!(
                                waiting = waiting.len(),
                                "too many deliveries waiting; reconnecting"
                            );
                            break Err(ClientError::Disconnected);
                        }
                    }
                }
            }
            Some(server_frame::Kind::Ephemeral(e)) => {
                let d = api::Deliver {
                    seq: 0,
                    client_id: Vec::new(),
                    body: e.body,
                    received_at: now_ms(),
                };
                // Never stored by the relay: nothing to acknowledge or to try again.
                let _ = inner.deliver(&conn, &d, true).await;
            }
            Some(server_frame::Kind::QueueDrained(_)) => {
                if waiting.is_empty() {
                    inner.caught_up_now();
                } else {
                    drain_pending = true;
                }
            }
            Some(server_frame::Kind::PreKeysLow(low)) => {
                // The relay tells once per low spell (and again after an upload that ended it),
                // so every notice is acted on.
                // The relay's count, not this device's: keys handed out but never used are
                // still here and would hide the shortage.
                let more = inner.lock().and_then(|mut d| {
                    Ok(d.replenish_pre_keys_for(
                        low.one_time_left,
                        low.kem_left,
                        &mut rng(),
                        now_ms(),
                    )?)
                });
                match more {
                    Ok(true) => {
                        if let Err(e) = inner.upload_pre_keys(&conn).await {
                            tracing::warn!(error = %e, "new one-time pre-keys not uploaded");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "one-time pre-keys not replenished");
                        inner.recover_store();
                    }
                }
            }
            Some(server_frame::Kind::Drain(_)) => break Ok(Ended::Drained),
            Some(server_frame::Kind::Revoked(_)) => {
                inner.revoke();
                break Ok(Ended::Stopped);
            }
            Some(_) => {}
        }
    };
    inner.conn.send_replace(None);
    inner.emit(Event::Connection(false));
    // The relay closes a revoked device's connection with its own code; the `Revoked` frame
    // before it may not have been read.
    if let Some(quinn::ConnectionError::ApplicationClosed(c)) =
        conn.quic().and_then(quinn::Connection::close_reason)
        && c.error_code == quinn::VarInt::from_u32(REVOKED_CLOSE)
        && !inner.shutdown.is_cancelled()
    {
        inner.revoke();
    }
    conn.close();
    result
}

/// Acknowledges a settled delivery. The answer is not waited for, so the next delivery is not
/// held up by a round trip (a lost ack only means a re-delivery, which client-core rejects as a
/// duplicate); the frame is queued before this returns, so a clean close confirms it.
pub(super) fn ack(conn: &Arc<RelayConnection>, seq: u64) {
    if let Err(e) = conn.ack_now(vec![seq]) {
        tracing::debug!(error = %e, "acknowledgement not sent; the relay delivers it again");
    }
}

impl Inner {
    /// Everything the relay had queued for this device on this connection is processed: tells
    /// the app (`CaughtUp`), then counts it for those waiting on a drain (a wake-up).
    fn caught_up_now(&self) {
        self.emit(Event::CaughtUp);
        self.drained
            .store(true, std::sync::atomic::Ordering::Release);
        self.caught_up.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Waits until `flag` holds `value` (forever if its sender is gone).
async fn until(flag: &mut tokio::sync::watch::Receiver<bool>, value: bool) {
    if flag.wait_for(|v| *v == value).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleeps until `due`, or forever when there is nothing to wait for.
pub(super) async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The relay's close code for a revoked device (docs/RELAY_PROTOCOL.md §2).
pub(super) const REVOKED_CLOSE: u32 = 2;

/// Keeps the engine connected until shutdown, except while the app suspends it.
pub(super) async fn run(inner: Arc<Inner>) {
    let mut backoff = MIN_BACKOFF;
    let mut suspended = inner.suspended.subscribe();
    let mut redial = inner.redial.subscribe();
    while !inner.shutdown.is_cancelled() {
        if *suspended.borrow_and_update() {
            inner.state.send_replace(ConnectionState::Suspended);
            tokio::select! {
                () = inner.shutdown.cancelled() => break,
                () = until(&mut suspended, false) => {}
            }
            // Resumed: the first attempt is made at once.
            inner.state.send_replace(ConnectionState::Connecting);
            backoff = MIN_BACKOFF;
            continue;
        }
        redial.borrow_and_update();
        let started = tokio::time::Instant::now();
        // Shutdown, suspension and a network change also cut short a connection attempt (to an
        // unreachable relay, or over a network that is gone).
        let established = tokio::select! {
            r = establish(&inner) => r,
            () = inner.shutdown.cancelled() => break,
            () = until(&mut suspended, true) => continue,
            _ = redial.changed() => {
                backoff = MIN_BACKOFF;
                continue;
            }
        };
        let ended = match established {
            Ok(Some((conn, events))) => serve(&inner, conn, events, &mut redial).await,
            Ok(None) => Ok(Ended::Stopped),
            Err(e) => Err(e),
        };
        if inner.shutdown.is_cancelled() {
            break;
        }
        let drained = match ended {
            Ok(Ended::Suspended | Ended::Stopped) => {
                // Suspended still, the loop's top says so; resumed meanwhile, it dials.
                inner.state.send_replace(ConnectionState::Offline);
                continue;
            }
            Ok(Ended::Redial) => {
                // Dialled again at once; the app keeps working offline meanwhile.
                inner.state.send_replace(ConnectionState::Offline);
                backoff = MIN_BACKOFF;
                continue;
            }
            Ok(Ended::Drained) => true,
            Err(e) => {
                tracing::debug!(error = %e, "relay connection ended");
                false
            }
        };
        // Until the next attempt gets through, the app works offline (its sends wait in the
        // outbox).
        inner.state.send_replace(ConnectionState::Offline);
        // A connection that lasted a while, or that the relay ended by draining (it asked for the
        // reconnect: nothing failed), resets the backoff.
        if drained || started.elapsed() > Duration::from_secs(10) {
            backoff = MIN_BACKOFF;
        }
        let jitter = rng().random_range(0.5..1.5);
        let wait = backoff.mul_f64(jitter);
        tokio::select! {
            () = inner.shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
            // Suspended meanwhile (the loop's top waits), or a new network: no reason to wait.
            () = until(&mut suspended, true) => continue,
            _ = redial.changed() => {
                backoff = MIN_BACKOFF;
                continue;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    inner.conn.send_replace(None);
    inner.close_anonymous().await;
}

impl Inner {
    /// Uploads the signed pre-key, the last-resort key and the one-time keys never uploaded.
    pub(super) async fn upload_pre_keys(&self, conn: &RelayConnection) -> Result<(), ClientError> {
        let path = self.profile.join(UPLOADED_FILE);
        let done: u32 = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let published = self.lock()?.published_pre_keys()?;
        let otk: Vec<_> = published
            .one_time_pre_keys
            .iter()
            .filter(|k| k.id > done)
            .take(hush_net::MAX_PRE_KEYS_PER_UPLOAD)
            .collect();
        let kem: Vec<_> = published
            .kem_pre_keys
            .iter()
            .filter(|k| k.id > done)
            .take(hush_net::MAX_PRE_KEYS_PER_UPLOAD)
            .collect();
        let highest = otk
            .iter()
            .map(|k| k.id)
            .chain(kem.iter().map(|k| k.id))
            .max()
            .unwrap_or(done)
            .max(done);
        conn.request(client_frame::Kind::UploadPreKeys(api::UploadPreKeys {
            signed_pre_key: published.signed_pre_key.encode_to_vec(),
            last_resort_kem_pre_key: published.last_resort_kem_pre_key.encode_to_vec(),
            one_time_pre_keys: otk.iter().map(|k| k.encode_to_vec()).collect(),
            kem_pre_keys: kem.iter().map(|k| k.encode_to_vec()).collect(),
        }))
        .await?;
        // Only after the relay stored them: a key is never offered twice.
        crate::private_fs::write_atomic(&path, highest.to_string().as_bytes())
            .map_err(|e| ClientError::Profile(e.to_string()))?;
        Ok(())
    }

    /// Runs the device's key upkeep (rotations, stale sessions, sender-key retries) and
    /// publishes new pre-keys when it made any (unless `publish` is false: the caller uploads),
    /// then resolves the pending group creations and sends the pending group notices.
    pub(super) async fn upkeep(
        &self,
        conn: &Arc<RelayConnection>,
        publish: bool,
    ) -> Result<(), ClientError> {
        let done = self.lock()?.upkeep(&mut rng(), now_ms());
        let done = match done {
            Ok(u) => u,
            Err(e) => {
                self.recover_store();
                return Err(e.into());
            }
        };
        if done.publish && publish {
            self.upload_pre_keys(conn).await?;
        }
        self.send_outgoing(conn, done.outgoing).await;
        // Group creations whose append went unconfirmed (PROTOCOL.md §17.5): stored once found
        // in their logs, or appended again.
        if let Err(e) = self.resolve_pending_creations(conn).await {
            tracing::warn!(error = %e, "pending group creations not resolved; tried again later");
        }
        // Group notices the relay has not taken yet (a connection lost after a change landed,
        // a member device without a session then): on every connection and periodically.
        if let Err(e) = self.send_pending_notices(conn).await {
            tracing::warn!(error = %e, "pending group notices not sent; tried again later");
        }
        Ok(())
    }
}

impl Engine {
    /// Registers the URL the relay wakes this device at when mail is queued while it is offline
    /// (a push distributor or gateway; `https://`). The wake-up carries no content and no
    /// sender. An empty `url` unregisters. Kept in the profile and registered again on every
    /// connection, so a relay that lost it learns it back.
    pub async fn register_push(&self, url: &str) -> Result<(), ClientError> {
        self.register_endpoint(api::RegisterPush {
            url: url.to_owned(),
            ..Default::default()
        })
        .await
    }

    /// Rotates this device's delivery key and tells the relay the new token (PROTOCOL.md §21.6):
    /// whoever holds the old key can no longer put sealed envelopes into this device's queue,
    /// and their sends fail (they are not turned into introductions) until an envelope from
    /// this device brings them the new key. The core of blocking: rotate, then keep writing to
    /// the contacts kept, not to the blocked one.
    pub async fn rotate_delivery_key(&self) -> Result<(), ClientError> {
        self.inner.lock()?.rotate_delivery_key()?;
        let conn = self.inner.current(CONNECT_WAIT).await?;
        self.inner.publish_delivery_token(&conn).await
    }

    /// Lets sealed envelopes into this device's queue from anyone (`true`), or only from its
    /// contacts, who hold its delivery key (`false`, the default). Strangers can always write a
    /// first message as an introduction, which the relay sees the sender of. Kept in the
    /// profile and told to the relay on every connection.
    pub async fn set_sealed_from_anyone(&self, anyone: bool) -> Result<(), ClientError> {
        let path = self.inner.profile.join(ANYONE_FILE);
        crate::private_fs::write_atomic(&path, if anyone { b"1" } else { b"0" })
            .map_err(|e| ClientError::Profile(e.to_string()))?;
        let conn = self.inner.current(CONNECT_WAIT).await?;
        self.inner.publish_delivery_token(&conn).await
    }
}
