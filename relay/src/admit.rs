//! Admission: what one source address block and one account may hold at once.
//!
//! * **Connections per address block** (`max_connections_per_block`): a [`ConnSlot`] is taken
//!   when a connection is accepted and given back when its task ends. Blocks are the source
//!   address cut to `block_prefix_v4` / `block_prefix_v6` bits ([`block_of`]).
//! * **Connections per account** (`max_connections_per_account`): an [`AccountSlot`] is taken
//!   when a connection authenticates and given back when it ends.
//! * **Pending device links** ([`LinkGuard`]): the message a new device leaves for its account's
//!   existing device belongs to the connection that left it, as a provisioning socket does: it
//!   is removed when taken, when it expires, or when that connection ends, whichever comes first.
//!   A block holds at most `max_pending_links_per_block` of them (so that no block can refuse
//!   another block's links) and the relay at most `max_pending_links`.
//!
//! Every slot and link is given back by `Drop`, so no path that ends a connection can leak one.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::Config;
use crate::ops::Metrics;

/// The address block of `ip`: its first `v4_prefix` (IPv4) or `v6_prefix` (IPv6) bits, the
/// rest zero. An IPv4-mapped IPv6 address counts as the IPv4 address it maps.
pub fn block_of(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> IpAddr {
    let v4 = |a: Ipv4Addr| {
        let keep = 32 - u32::from(v4_prefix.min(32));
        let mask = u32::MAX.checked_shl(keep).unwrap_or(0);
        IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
    };
    match ip {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(m) => v4(m),
            None => {
                let keep = 128 - u32::from(v6_prefix.min(128));
                let mask = u128::MAX.checked_shl(keep).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        },
    }
}

/// Why a pending link was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkRefused {
    /// The source address block holds its share of pending links; one of them expires in
    /// `retry_after_ms` at the latest.
    BlockFull {
        /// Until the block's oldest link expires (ms).
        retry_after_ms: u64,
    },
    /// The relay's table of pending links is full; its oldest entry expires in `retry_after_ms`
    /// at the latest.
    TableFull {
        /// Until the table's oldest link expires (ms).
        retry_after_ms: u64,
    },
}

/// One pending link.
#[derive(Debug)]
struct Link {
    body: Vec<u8>,
    /// Wall-clock expiry (ms since the epoch).
    expires_at: u64,
    block: IpAddr,
    /// Which insertion this is (a guard removes only its own).
    serial: u64,
}

/// An open link offer: the account that made it, and until when (wall ms).
#[derive(Debug)]
struct Offer {
    account: [u8; 32],
    expires_at: u64,
}

#[derive(Debug, Default)]
struct Links {
    by_channel: HashMap<[u8; 32], Link>,
    per_block: HashMap<IpAddr, u32>,
    next_serial: u64,
}

impl Links {
    fn remove(&mut self, channel: &[u8; 32]) -> Option<Link> {
        let link = self.by_channel.remove(channel)?;
        release(&mut self.per_block, &link.block);
        Some(link)
    }

    fn purge_expired(&mut self, now_ms: u64) {
        let expired: Vec<[u8; 32]> = self
            .by_channel
            .iter()
            .filter(|(_, l)| l.expires_at <= now_ms)
            .map(|(c, _)| *c)
            .collect();
        for c in expired {
            self.remove(&c);
        }
    }

    /// Time until the first of the links that `pick` selects expires (at least 1 ms).
    fn first_expiry(&self, now_ms: u64, pick: impl Fn(&Link) -> bool) -> u64 {
        self.by_channel
            .values()
            .filter(|l| pick(l))
            .map(|l| l.expires_at.saturating_sub(now_ms))
            .min()
            .unwrap_or(1)
            .max(1)
    }
}

/// Takes one from `key`'s count if it is under `cap`.
fn take<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, key: K, cap: u32) -> bool {
    let n = counts.entry(key).or_insert(0);
    if *n >= cap {
        return false;
    }
    *n += 1;
    true
}

/// Gives one back to `key`'s count; the entry goes when it reaches zero.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// The counts behind admission (see the module documentation).
#[derive(Debug)]
pub struct Admission {
    v4_prefix: u8,
    v6_prefix: u8,
    max_per_block: u32,
    max_per_account: u32,
    max_links: usize,
    max_links_per_block: u32,
    blocks: Mutex<HashMap<IpAddr, u32>>,
    accounts: Mutex<HashMap<[u8; 32], u32>>,
    links: Mutex<Links>,
    /// Channels offered by an existing device (see [`Admission::offer_link`]).
    offers: Mutex<HashMap<[u8; 32], Offer>>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The counts stay consistent whatever panicked while holding them: every update is one
    // statement.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Admission {
    /// Empty counts with the caps of `cfg`.
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Self {
        Self {
            v4_prefix: cfg.block_prefix_v4,
            v6_prefix: cfg.block_prefix_v6,
            max_per_block: cfg.max_connections_per_block,
            max_per_account: cfg.max_connections_per_account,
            max_links: cfg.max_pending_links as usize,
            max_links_per_block: cfg.max_pending_links_per_block,
            blocks: Mutex::new(HashMap::new()),
            accounts: Mutex::new(HashMap::new()),
            links: Mutex::new(Links::default()),
            offers: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The address block of `ip` under the configured prefixes.
    pub fn block(&self, ip: IpAddr) -> IpAddr {
        block_of(ip, self.v4_prefix, self.v6_prefix)
    }

    /// A connection slot for a connection from `ip`, or `None` if its block holds its cap.
    pub fn connection(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let block = self.block(ip);
        take(&mut lock(&self.blocks), block, self.max_per_block).then(|| ConnSlot {
            admission: Arc::clone(self),
            block,
        })
    }

    /// A slot for one more authenticated connection of `account`, or `None` at its cap.
    pub fn account(self: &Arc<Self>, account: [u8; 32]) -> Option<AccountSlot> {
        take(&mut lock(&self.accounts), account, self.max_per_account).then(|| {
            self.metrics.connections_authenticated.inc();
            AccountSlot {
                admission: Arc::clone(self),
                account,
            }
        })
    }

    /// Connections counted for the block of `ip` now.
    pub fn connections_of_block(&self, ip: IpAddr) -> u32 {
        lock(&self.blocks)
            .get(&self.block(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Authenticated connections counted for `account` now.
    pub fn connections_of_account(&self, account: &[u8; 32]) -> u32 {
        lock(&self.accounts).get(account).copied().unwrap_or(0)
    }

    /// Pending links now.
    pub fn links_pending(&self) -> usize {
        lock(&self.links).by_channel.len()
    }

    /// Leaves `body` under `channel` for a connection from `ip` until `expires_at` (wall ms):
    /// the link lives as long as the returned guard (and is removed earlier when taken or
    /// expired). An earlier link under the same channel, and the link `previous` (the
    /// connection's earlier one, if still pending), are replaced. Refused, nothing changes.
    pub fn put_link(
        self: &Arc<Self>,
        ip: IpAddr,
        channel: [u8; 32],
        body: Vec<u8>,
        now_ms: u64,
        expires_at: u64,
        previous: Option<&LinkGuard>,
    ) -> Result<LinkGuard, LinkRefused> {
        let block = self.block(ip);
        let mut links = lock(&self.links);
        let block_count = |l: &Links| l.per_block.get(&block).copied().unwrap_or(0);
        if links.by_channel.len() >= self.max_links
            || block_count(&links) >= self.max_links_per_block
        {
            links.purge_expired(now_ms);
        }
        // What this put replaces, and so frees.
        let mut replaced: Vec<[u8; 32]> = Vec::new();
        if links.by_channel.contains_key(&channel) {
            replaced.push(channel);
        }
        if let Some(p) = previous
            && p.channel != channel
            && links
                .by_channel
                .get(&p.channel)
                .is_some_and(|l| l.serial == p.serial)
        {
            replaced.push(p.channel);
        }
        let freed_in_block = replaced
            .iter()
            .filter(|c| links.by_channel.get(*c).is_some_and(|l| l.block == block))
            .count();
        let in_block = (block_count(&links) as usize).saturating_sub(freed_in_block);
        if in_block >= self.max_links_per_block as usize {
            return Err(LinkRefused::BlockFull {
                retry_after_ms: links.first_expiry(now_ms, |l| l.block == block),
            });
        }
        if links.by_channel.len().saturating_sub(replaced.len()) >= self.max_links {
            return Err(LinkRefused::TableFull {
                retry_after_ms: links.first_expiry(now_ms, |_| true),
            });
        }
        for c in &replaced {
            links.remove(c);
        }
        links.next_serial = links.next_serial.wrapping_add(1);
        let serial = links.next_serial;
        *links.per_block.entry(block).or_insert(0) += 1;
        links.by_channel.insert(
            channel,
            Link {
                body,
                expires_at,
                block,
                serial,
            },
        );
        self.gauge(&links);
        Ok(LinkGuard {
            admission: Arc::clone(self),
            channel,
            serial,
        })
    }

    /// Opens (or renews) an offer of `channel` by `account` until `expires_at` (wall ms). An
    /// account holds at most [`limits::MAX_LINK_OFFERS_PER_ACCOUNT`] open offers, the relay at
    /// most `max_pending_links`; refused, nothing changes.
    pub fn offer_link(
        &self,
        account: [u8; 32],
        channel: [u8; 32],
        now_ms: u64,
        expires_at: u64,
    ) -> Result<(), LinkRefused> {
        let mut offers = lock(&self.offers);
        offers.retain(|_, o| o.expires_at > now_ms);
        let first_expiry = |offers: &HashMap<[u8; 32], Offer>, mine: bool| {
            offers
                .values()
                .filter(|o| !mine || o.account == account)
                .map(|o| o.expires_at.saturating_sub(now_ms))
                .min()
                .unwrap_or(1)
                .max(1)
        };
        if !offers.contains_key(&channel) {
            if offers.values().filter(|o| o.account == account).count()
                >= crate::limits::MAX_LINK_OFFERS_PER_ACCOUNT
            {
                return Err(LinkRefused::BlockFull {
                    retry_after_ms: first_expiry(&offers, true),
                });
            }
            if offers.len() >= crate::limits::MAX_LINK_OFFERS {
                return Err(LinkRefused::TableFull {
                    retry_after_ms: first_expiry(&offers, false),
                });
            }
        }
        offers.insert(
            channel,
            Offer {
                account,
                expires_at,
            },
        );
        Ok(())
    }

    /// Whether `channel` is offered (and the offer not expired).
    pub fn is_offered(&self, channel: &[u8; 32], now_ms: u64) -> bool {
        lock(&self.offers)
            .get(channel)
            .is_some_and(|o| o.expires_at > now_ms)
    }

    /// Uses up the offer of `channel` (its link message was left).
    pub fn use_offer(&self, channel: &[u8; 32]) {
        lock(&self.offers).remove(channel);
    }

    /// Takes (removes) the link under `channel`, if one is pending and not expired.
    pub fn take_link(&self, channel: &[u8; 32], now_ms: u64) -> Option<Vec<u8>> {
        let mut links = lock(&self.links);
        let link = links.remove(channel);
        self.gauge(&links);
        link.filter(|l| l.expires_at > now_ms).map(|l| l.body)
    }

    fn gauge(&self, links: &Links) {
        self.metrics
            .links_pending
            .set(i64::try_from(links.by_channel.len()).unwrap_or(i64::MAX));
    }
}

/// One connection counted against its address block, until dropped.
#[derive(Debug)]
pub struct ConnSlot {
    admission: Arc<Admission>,
    block: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        release(&mut lock(&self.admission.blocks), &self.block);
    }
}

/// One authenticated connection counted against its account, until dropped.
#[derive(Debug)]
pub struct AccountSlot {
    admission: Arc<Admission>,
    account: [u8; 32],
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        release(&mut lock(&self.admission.accounts), &self.account);
        self.admission.metrics.connections_authenticated.dec();
    }
}

/// A pending link's tie to the connection that left it: dropping it removes the link if it is
/// still pending.
#[derive(Debug)]
pub struct LinkGuard {
    admission: Arc<Admission>,
    channel: [u8; 32],
    serial: u64,
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let mut links = lock(&self.admission.links);
        if links
            .by_channel
            .get(&self.channel)
            .is_some_and(|l| l.serial == self.serial)
        {
            links.remove(&self.channel);
            self.admission.gauge(&links);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(tune: impl FnOnce(&mut Config)) -> Arc<Admission> {
        let mut cfg = Config::default();
        tune(&mut cfg);
        Arc::new(Admission::new(&cfg, Arc::new(Metrics::new())))
    }

    #[test]
    fn blocks_cut_addresses_to_their_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(block_of(ip("192.0.2.77"), 24, 48), ip("192.0.2.0"));
        assert_eq!(block_of(ip("192.0.2.77"), 32, 48), ip("192.0.2.77"));
        assert_eq!(block_of(ip("192.0.2.77"), 0, 48), ip("0.0.0.0"));
        assert_eq!(block_of(ip("192.0.2.77"), 40, 48), ip("192.0.2.77"));
        assert_eq!(
            block_of(ip("2001:db8:1:2:3::9"), 24, 48),
            ip("2001:db8:1::")
        );
        assert_eq!(block_of(ip("2001:db8:1:2:3::9"), 24, 0), ip("::"));
        assert_eq!(
            block_of(ip("2001:db8:1:2:3::9"), 24, 128),
            ip("2001:db8:1:2:3::9")
        );
        // A mapped IPv4 address is its IPv4 block.
        assert_eq!(block_of(ip("::ffff:192.0.2.77"), 24, 48), ip("192.0.2.0"));
    }

    #[test]
    fn connection_slots_are_counted_per_block_and_given_back_on_drop() {
        let a = admission(|c| c.max_connections_per_block = 2);
        let one = a.connection("10.0.0.1".parse().unwrap()).unwrap();
        let _two = a.connection("10.0.0.2".parse().unwrap()).unwrap();
        assert!(a.connection("10.0.0.3".parse().unwrap()).is_none());
        assert!(a.connection("10.0.1.3".parse().unwrap()).is_some());
        drop(one);
        assert!(a.connection("10.0.0.3".parse().unwrap()).is_some());
    }

    #[test]
    fn account_slots_are_capped_and_given_back_on_drop() {
        let a = admission(|c| c.max_connections_per_account = 1);
        let first = a.account([1; 32]).unwrap();
        assert!(a.account([1; 32]).is_none());
        assert!(a.account([2; 32]).is_some());
        drop(first);
        assert_eq!(a.connections_of_account(&[1; 32]), 0);
        assert!(a.account([1; 32]).is_some());
    }

    #[test]
    fn links_are_capped_per_block_and_in_all_and_leave_with_their_guard() {
        let a = admission(|c| {
            c.max_pending_links_per_block = 2;
            c.max_pending_links = 3;
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let g1 = a
            .put_link(ip("10.0.0.1"), [1; 32], vec![1], 0, 1000, None)
            .unwrap();
        let _g2 = a
            .put_link(ip("10.0.0.2"), [2; 32], vec![2], 100, 1100, None)
            .unwrap();
        assert_eq!(
            a.put_link(ip("10.0.0.3"), [3; 32], vec![3], 200, 1200, None)
                .unwrap_err(),
            LinkRefused::BlockFull {
                retry_after_ms: 800
            }
        );
        // Refused: nothing changed.
        assert_eq!(a.links_pending(), 2);
        // Another block still links, up to the table's cap.
        let g3 = a
            .put_link(ip("10.0.9.1"), [3; 32], vec![3], 200, 1200, None)
            .unwrap();
        assert_eq!(
            a.put_link(ip("10.0.8.1"), [4; 32], vec![4], 300, 1300, None)
                .unwrap_err(),
            LinkRefused::TableFull {
                retry_after_ms: 700
            }
        );
        // The connection replaces its own link rather than adding one.
        let g3b = a
            .put_link(ip("10.0.9.1"), [5; 32], vec![5], 300, 1300, Some(&g3))
            .unwrap();
        drop(g3);
        assert_eq!(a.links_pending(), 3);
        assert_eq!(a.take_link(&[3; 32], 300), None);
        assert_eq!(a.take_link(&[5; 32], 300), Some(vec![5]));
        drop(g3b);
        // Dropping the guard removes its link; an expired link is not handed out.
        drop(g1);
        assert_eq!(a.take_link(&[1; 32], 300), None);
        assert_eq!(a.take_link(&[2; 32], 1100), None);
        assert_eq!(a.links_pending(), 0);
        assert_eq!(a.metrics.links_pending.get(), 0);
    }

    #[test]
    fn expired_links_make_room_at_the_cap() {
        let a = admission(|c| {
            c.max_pending_links_per_block = 1;
            c.max_pending_links = 1;
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let _old = a.put_link(ip, [1; 32], vec![1], 0, 10, None).unwrap();
        assert!(a.put_link(ip, [2; 32], vec![2], 5, 15, None).is_err());
        let _new = a.put_link(ip, [2; 32], vec![2], 10, 20, None).unwrap();
        assert_eq!(a.links_pending(), 1);
    }
}
