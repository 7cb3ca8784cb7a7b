-- ARGV: 1 prefix, 2 hash. Returns nil, or {"c"|"r", session id, field, value, ...}.
local v = redis.call('GET', tkey(ARGV[2]))
if not v then return nil end
local sid = string.sub(v, 3)
local all = redis.call('HGETALL', skey(sid))
if #all == 0 then return nil end
return {string.sub(v, 1, 1), sid, unpack(all)}
