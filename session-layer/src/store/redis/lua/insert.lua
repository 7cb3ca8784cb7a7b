-- ARGV: 1 prefix, 2 session id, 3 user, 4 hash, 5 fence ('' = none), 6 max active ('' = none),
-- 7 now, 8 idle cutoff, 9 key ttl (ms), 10 channel, 11 header, 12 last active, 13 expires,
-- 14 number of other fields n, 15.. n field/value pairs, then (session id, at) activity pairs.
-- Returns {'fenced'}, or {'created', {published count, evicted hashes, error or ''}}.
local sid, user, hash = ARGV[2], ARGV[3], ARGV[4]
local fence, max, now, idle = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
local ttl = tonumber(ARGV[9])
if fence ~= '' and (redis.call('GET', p .. ':f:' .. user) or '0') ~= fence then
  return {'fenced', {'0', {}, ''}}
end
if redis.call('EXISTS', skey(sid), tkey(hash)) > 0 then
  return redis.error_reply('duplicate session id or token hash')
end
local n = tonumber(ARGV[14])
local fields = {'u', user, 'h', hash, 'a', ARGV[12], 'e', ARGV[13]}
for i = 15, 14 + 2 * n do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', skey(sid), unpack(fields))
redis.call('PEXPIRE', skey(sid), ttl)
redis.call('SET', tkey(hash), 'c:' .. sid, 'PX', ttl)
redis.call('ZADD', ukey(user), ARGV[12], sid)
-- No TTL on the index (older versions set one): no eviction may hide a session from "sign out
-- everywhere". Cleanup empties it, and Redis deletes an empty set.
redis.call('PERSIST', ukey(user))
redis.call('ZADD', p .. ':exp', ARGV[13], sid)

if max == '' then return {'created', {'0', {}, ''}} end
return {'created', revoking(ARGV[10], ARGV[11], function(evicted, published)
  for i = 15 + 2 * n, #ARGV - 1, 2 do touch(ARGV[i], ARGV[i + 1]) end
  local live = {}
  for _, other in ipairs(redis.call('ZRANGE', ukey(user), 0, -1)) do
    if other ~= sid then
      local f = redis.call('HMGET', skey(other), 'u', 'ra', 'e', 'a', 'c', 'h')
      if not f[1] then
        redis.call('ZREM', ukey(user), other)
      elseif not f[2] and tonumber(f[3]) > tonumber(now) and tonumber(f[4]) > idle then
        live[#live + 1] = {id = other, a = tonumber(f[4]), c = tonumber(f[5]) or 0, cs = f[5], h = f[6]}
      end
    end
  end
  -- Most recently active first; ties: the newer first (as the SQL stores order them).
  table.sort(live, function(x, y)
    if x.a ~= y.a then return x.a > y.a end
    if x.c ~= y.c then return x.c > y.c end
    return x.id > y.id
  end)
  for j = tonumber(max), #live do
    revoke(live[j].id, live[j].cs, now, 'session_limit')
    evicted[#evicted + 1] = live[j].h
    published[#published + 1] = live[j].h
  end
end)}
