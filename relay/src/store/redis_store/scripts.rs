//! The Lua scripts that make each multi-key step of the Redis store atomic. Every script touches
//! the keys of one account only (`KEYS[1]` is the account's key start, `<prefix>{a:<hex>}`; the
//! other names are built from it and share its hash tag, so they are in its slot).
//!
//! A queued envelope is a sorted-set member scored by its sequence number:
//! `seq` (20 decimal digits) ‖ `received_at` (20 decimal digits) ‖ sender account (32) ‖ sender
//! device (u32 BE) ‖ client id (16) ‖ body. It counts `#member + 36` bytes (the body plus the
//! fixed 128 of `usage::ENVELOPE_OVERHEAD`). Per device, `:m:<dev>` holds the counters `n`
//! (envelopes), `b` (bytes), and `sn<sender>`/`sb<sender>` per sending account; `:seq:<dev>` the
//! last sequence number given (never reset, so numbers never repeat); `:mb` the account's bytes;
//! `:qd` the devices with a queue; `:id:<send key>` `seq:received_at` of a recent send.

/// Functions the mailbox scripts share: counting a removed envelope out, and tidying a queue.
const MAILBOX_PRELUDE: &str = r"
local T = KEYS[1]
local removed, freed = 0, 0
local function dec(h, field, by)
  if redis.call('HINCRBY', h, field, -by) <= 0 then redis.call('HDEL', h, field) end
end
local function forget(dev, m)
  local b = #m + 36
  local sender = string.sub(m, 41, 72)
  local h = T .. ':m:' .. dev
  dec(h, 'n', 1)
  dec(h, 'b', b)
  dec(h, 'sn' .. sender, 1)
  dec(h, 'sb' .. sender, b)
  removed = removed + 1
  freed = freed + b
end
local function tidy(dev)
  if redis.call('ZCARD', T .. ':q:' .. dev) == 0 then
    redis.call('SREM', T .. ':qd', dev)
    redis.call('DEL', T .. ':m:' .. dev)
  end
end
local function done()
  if freed > 0 and redis.call('DECRBY', T .. ':mb', freed) <= 0 then
    redis.call('DEL', T .. ':mb')
  end
  return {removed, freed}
end
";

/// Plans (and with mode `w`, writes) the envelopes of one send to one account.
///
/// ARGV: mode (`w` write, `d` plan only), `1` if a send that fits nowhere is refused, the caps
/// (queue envelopes, queue bytes, sender envelopes, sender bytes, account bytes), the relay's
/// total now and its cap, the send-id retention (ms), then per envelope: device, send key (hex),
/// record (the member without its sequence number), received at.
///
/// Returns `{status, detail, entries…}`: status `ok` (detail: bytes added; `new` when the
/// account had no mail before, so the caller adds it to the index the TTL sweep walks), `QF`/`SQ` (detail:
/// the device that is full), `MF` or `RF`; per envelope four entries: kind (`k` known, `f`
/// fresh, `q` queue full, `s` sender share used up), sequence number, received at, previous
/// sequence number.
pub(super) const ENQUEUE: &str = r"
local T = KEYS[1]
local write = ARGV[1] == 'w'
local refuse_all = ARGV[2] == '1'
local qlen, qbytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local slen, sbytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local abytes = tonumber(ARGV[7])
local total, tcap = tonumber(ARGV[8]), tonumber(ARGV[9])
local keep = ARGV[10]
local n = math.floor((#ARGV - 10) / 4)
local counts = {}
local function count(dev, a, b)
  local k = dev .. ':' .. a
  local c = counts[k]
  if not c then
    local v = redis.call('HMGET', T .. ':m:' .. dev, a, b)
    c = {tonumber(v[1]) or 0, tonumber(v[2]) or 0}
    counts[k] = c
  end
  return c
end
local plan = {}
local known, fits = false, false
local adding = 0
local queue_full, sender_full = nil, nil
for i = 0, n - 1 do
  local at = 11 + 4 * i
  local dev, idk, rec = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local prior = redis.call('GET', T .. ':id:' .. idk)
  if prior then
    known = true
    local sep = string.find(prior, ':', 1, true)
    plan[i + 1] = {'k', tonumber(string.sub(prior, 1, sep - 1)), tonumber(string.sub(prior, sep + 1)), 0}
  else
    local bytes = #rec + 56
    local sender = string.sub(rec, 21, 52)
    local q = count(dev, 'n', 'b')
    local s = count(dev, 'sn' .. sender, 'sb' .. sender)
    if q[1] + 1 > qlen or q[2] + bytes > qbytes then
      plan[i + 1] = {'q', 0, 0, 0}
      queue_full = queue_full or dev
    elseif s[1] + 1 > slen or s[2] + bytes > sbytes then
      plan[i + 1] = {'s', 0, 0, 0}
      sender_full = sender_full or dev
    else
      q[1], q[2] = q[1] + 1, q[2] + bytes
      s[1], s[2] = s[1] + 1, s[2] + bytes
      adding = adding + bytes
      fits = true
      plan[i + 1] = {'f', 0, 0, 0}
    end
  end
end
if refuse_all and n > 0 and not known and not fits then
  if queue_full then return {'QF', queue_full} end
  return {'SQ', sender_full}
end
if adding > 0 and (tonumber(redis.call('GET', T .. ':mb')) or 0) + adding > abytes then
  return {'MF', ''}
end
if total + adding > tcap then
  return {'RF', ''}
end
local status = 'ok'
if write then
  for i = 0, n - 1 do
    if plan[i + 1][1] == 'f' then
      local at = 11 + 4 * i
      local dev, idk, rec, received = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
      local bytes = #rec + 56
      local sender = string.sub(rec, 21, 52)
      local seq = redis.call('INCR', T .. ':seq:' .. dev)
      local text = string.format('%.0f', seq)
      redis.call('ZADD', T .. ':q:' .. dev, text, string.format('%020.0f', seq) .. rec)
      local h = T .. ':m:' .. dev
      redis.call('HINCRBY', h, 'n', 1)
      redis.call('HINCRBY', h, 'b', bytes)
      redis.call('HINCRBY', h, 'sn' .. sender, 1)
      redis.call('HINCRBY', h, 'sb' .. sender, bytes)
      redis.call('SADD', T .. ':qd', dev)
      redis.call('SET', T .. ':id:' .. idk, text .. ':' .. received, 'PX', keep)
      plan[i + 1] = {'f', seq, tonumber(received), seq - 1}
    end
  end
  if adding > 0 and redis.call('INCRBY', T .. ':mb', adding) == adding then
    status = 'new'
  end
end
local out = {status, adding}
for i = 1, n do
  for j = 1, 4 do out[#out + 1] = plan[i][j] end
end
return out
";

/// Deletes acknowledged envelopes. ARGV: device, then sequence numbers. Returns `{count, bytes}`.
pub(super) fn ack() -> String {
    format!(
        "{MAILBOX_PRELUDE}
local dev = ARGV[1]
local q = T .. ':q:' .. dev
for i = 2, #ARGV do
  local found = redis.call('ZRANGEBYSCORE', q, ARGV[i], ARGV[i])
  for _, m in ipairs(found) do forget(dev, m) end
  if #found > 0 then redis.call('ZREMRANGEBYSCORE', q, ARGV[i], ARGV[i]) end
end
tidy(dev)
return done()
"
    )
}

/// One page of the TTL sweep of one device's queue: deletes, among the envelopes with a sequence
/// number from ARGV[3] on (at most ARGV[4] of them), those received before ARGV[2] (ms).
/// ARGV[1]: the device. Returns `{count, bytes, next}`: `next` is where the following page starts,
/// 0 when this one reached the end of the queue (then an empty queue is tidied away).
pub(super) fn sweep_page() -> String {
    format!(
        "{MAILBOX_PRELUDE}
local dev, cutoff, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local q = T .. ':q:' .. dev
local page = redis.call('ZRANGEBYSCORE', q, ARGV[3], '+inf', 'LIMIT', 0, limit)
local last = 0
for _, m in ipairs(page) do
  last = tonumber(string.sub(m, 1, 20))
  if tonumber(string.sub(m, 21, 40)) < cutoff then
    redis.call('ZREM', q, m)
    forget(dev, m)
  end
end
local r = done()
if #page < limit then
  tidy(dev)
  r[3] = 0
else
  r[3] = last + 1
end
return r
"
    )
}

/// Deletes a device's whole queue. ARGV: device. Returns `{count, bytes}`.
pub(super) fn purge() -> String {
    format!(
        "{MAILBOX_PRELUDE}
local dev = ARGV[1]
local q = T .. ':q:' .. dev
for _, m in ipairs(redis.call('ZRANGE', q, 0, -1)) do forget(dev, m) end
redis.call('DEL', q)
tidy(dev)
return done()
"
    )
}

/// Stores a pre-key upload. ARGV: device, signed pre-key, last-resort key, the number of
/// one-time X25519 keys, then (id, key) pairs: first the X25519 ones, then the ML-KEM ones.
pub(super) const PUBLISH_PRE_KEYS: &str = r"
local T, dev = KEYS[1], ARGV[1]
redis.call('SET', T .. ':spk:' .. dev, ARGV[2])
redis.call('SET', T .. ':lr:' .. dev, ARGV[3])
local x = tonumber(ARGV[4])
local i = 5
local function add(kind, id, key)
  redis.call('ZADD', T .. ':' .. kind .. ':' .. dev, id, id)
  redis.call('HSET', T .. ':' .. kind .. 'v:' .. dev, id, key)
end
for _ = 1, x do
  add('otk', ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i < #ARGV do
  add('kem', ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 1
";

/// Takes a bundle. ARGV: device, `1` to take one-time keys. Returns `{}` when the device
/// published nothing, else `{signed pre-key, has one-time key, one-time key, KEM key, KEM key is
/// the last-resort one, one-time keys left, KEM keys left}`.
pub(super) const CLAIM_PRE_KEYS: &str = r"
local T, dev = KEYS[1], ARGV[1]
local spk = redis.call('GET', T .. ':spk:' .. dev)
if not spk then return {} end
local function take(kind)
  local z = T .. ':' .. kind .. ':' .. dev
  local popped = redis.call('ZPOPMIN', z)
  if #popped == 0 then return nil end
  local v = T .. ':' .. kind .. 'v:' .. dev
  local key = redis.call('HGET', v, popped[1])
  redis.call('HDEL', v, popped[1])
  return key or nil
end
local otk, kem = nil, nil
if ARGV[2] == '1' then
  otk = take('otk')
  kem = take('kem')
end
local last = 0
if not kem then
  kem = redis.call('GET', T .. ':lr:' .. dev) or ''
  last = 1
end
local has = 0
if otk then has = 1 else otk = '' end
return {spk, has, otk, kem, last,
  redis.call('ZCARD', T .. ':otk:' .. dev), redis.call('ZCARD', T .. ':kem:' .. dev)}
";

/// Compares two versions written in decimal without leading zeros, exactly.
const VERSIONS: &str = r"
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
";

/// Stores the first device list of an account. ARGV: version, list. Returns 0 if it has one.
pub(super) const CREATE_ACCOUNT: &str = r"
local l = KEYS[1] .. ':list'
if redis.call('EXISTS', l) == 1 then return 0 end
redis.call('HSET', l, 'v', ARGV[1], 's', ARGV[2])
return 1
";

/// Replaces the device list if ARGV[1] (version) is newer, keeping the replaced list as `p`.
/// Returns `{1}`, or `{0, stored}`.
pub(super) fn put_device_list() -> String {
    format!(
        "{VERSIONS}
local l = KEYS[1] .. ':list'
local stored = redis.call('HGET', l, 'v')
if stored and not newer(ARGV[1], stored) then return {{0, stored}} end
local before = redis.call('HGET', l, 's')
if before then redis.call('HSET', l, 'p', before) end
redis.call('HSET', l, 'v', ARGV[1], 's', ARGV[2])
return {{1}}
"
    )
}

/// Binds the name of KEYS[1] to ARGV[1] (account) with ARGV[2] (proof) if it is free or
/// already the account's. Returns 0 if another account holds it.
pub(super) const CLAIM_NAME: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 32) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2])
return 1
";

/// Frees the name of KEYS[1] if account ARGV[1] holds it.
pub(super) const DROP_NAME: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 32) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
";

/// Appends one entry to a group log, the compare-and-swap on its number.
///
/// `KEYS[1]` is the log's key start, `<prefix>{gl:<hex slot>}`: `:m` is a hash of `c` (the write
/// check), `h` (the head) and `b` (the bytes of the entries), `:e` a hash of entry number
/// (decimal) → entry. ARGV: write check, number, entry, the caps (entries, bytes), the relay's
/// total of group log bytes as this node read it, and its cap.
///
/// Returns `{status, head}`: status `ok` (head: the number written), `F` (another write check),
/// `C` (not head + 1), `L` (over the log's caps), `R` (over the relay's). The write checks are
/// compared without an early exit (every byte, differences OR-ed together).
pub(super) const GROUP_LOG_APPEND: &str = r"
local T = KEYS[1]
local check, seq, entry = ARGV[1], ARGV[2], ARGV[3]
local max_n, max_b = tonumber(ARGV[4]), tonumber(ARGV[5])
local total, tcap = tonumber(ARGV[6]), tonumber(ARGV[7])
local m = redis.call('HMGET', T .. ':m', 'c', 'h', 'b')
local head = tonumber(m[2]) or 0
if m[1] then
  local stored = m[1]
  if #stored ~= #check then return {'F', head} end
  local diff = 0
  for i = 1, #check do
    diff = bit.bor(diff, bit.bxor(string.byte(stored, i), string.byte(check, i)))
  end
  if diff ~= 0 then return {'F', head} end
end
if seq ~= tostring(head + 1) then return {'C', head} end
local bytes = (tonumber(m[3]) or 0) + #entry
if head + 1 > max_n or bytes > max_b then return {'L', head} end
if total + #entry > tcap then return {'R', head} end
redis.call('HSET', T .. ':e', seq, entry)
redis.call('HSET', T .. ':m', 'c', check, 'h', seq, 'b', bytes)
return {'ok', head + 1}
";

/// Reads a group log (see [`GROUP_LOG_APPEND`] for its keys). ARGV: the first number, the most
/// entries, the most bytes (passed unless the first entry alone is larger).
///
/// Returns `{head, entry…}`, the entries numbered from the first on.
pub(super) const GROUP_LOG_READ: &str = r"
local T = KEYS[1]
local from, max_n, max_b = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local head = tonumber(redis.call('HGET', T .. ':m', 'h')) or 0
local out = {head}
local used = 0
local s = from
while s <= head and #out - 1 < max_n do
  local field = string.format('%d', s)
  local len = redis.call('HSTRLEN', T .. ':e', field)
  if #out > 1 and used + len > max_b then break end
  used = used + len
  out[#out + 1] = redis.call('HGET', T .. ':e', field)
  s = s + 1
end
return out
";
