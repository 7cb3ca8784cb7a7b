-- ARGV: 1 prefix, 2 now, 3 revoked before, 4 batch size. Deletes up to a batch of sessions
-- that expired before now and of sessions revoked before the cutoff, with every token key.
-- Returns {sessions deleted, index entries visited}: the caller repeats while it visits any.
local function purge(sid)
  redis.call('ZREM', p .. ':exp', sid)
  redis.call('ZREM', p .. ':rev', sid)
  local f = redis.call('HMGET', skey(sid), 'u', 'h', 'r')
  -- Gone already: its key TTL ran out (its token keys had the same TTL).
  if not f[1] then return 0 end
  redis.call('ZREM', ukey(f[1]), sid)
  redis.call('DEL', tkey(f[2]))
  local retired = f[3] or ''
  for i = 1, #retired, 64 do redis.call('DEL', tkey(string.sub(retired, i, i + 63))) end
  redis.call('DEL', skey(sid))
  return 1
end
local deleted, visited = 0, 0
for _, index in ipairs({{'exp', ARGV[2]}, {'rev', ARGV[3]}}) do
  local due = redis.call('ZRANGEBYSCORE', p .. ':' .. index[1], '-inf', '(' .. index[2],
    'LIMIT', 0, tonumber(ARGV[4]))
  for _, sid in ipairs(due) do
    visited = visited + 1
    deleted = deleted + purge(sid)
  end
end
return {deleted, visited}
