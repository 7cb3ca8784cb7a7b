-- ARGV: 1 prefix, 2 hash. Returns nil, or {"c"|"r", session id, field, value, ...}; "x" when
-- the token key and its session disagree (the session does not hold the hash as it says).
local hash = ARGV[2]
local v = redis.call('GET', tkey(hash))
if not v then return nil end
local kind, sid = string.sub(v, 1, 1), string.sub(v, 3)
local all = redis.call('HGETALL', skey(sid))
if #all == 0 then return nil end
local f = redis.call('HMGET', skey(sid), 'h', 'r')
local held = false
if kind == 'c' then
  held = f[1] == hash
elseif kind == 'r' then
  local retired = f[2] or ''
  for i = 1, #retired, 64 do
    if string.sub(retired, i, i + 63) == hash then held = true break end
  end
end
if not held then return {'x', sid} end
return {kind, sid, unpack(all)}
