-- ARGV: 1 prefix, 2 user, 3 excepted session id ('' = none), 4 reason, 5 now, 6 how long ago
-- (µs, the server's clock) a revocation is still "moments ago", 7 channel, 8 header. Advances
-- the fence. Returns {published count, revoked hashes, error or ''} (see revoking).
local user, except = ARGV[2], ARGV[3]
return revoking(ARGV[7], ARGV[8], function(revoked, published)
  advance_fence(user)
  local recent = server_now() - tonumber(ARGV[6])
  for _, sid in ipairs(redis.call('ZRANGE', ukey(user), 0, -1)) do
    local f = redis.call('HMGET', skey(sid), 'ra', 'c', 'h', 'rs')
    if not f[3] then
      redis.call('ZREM', ukey(user), sid)
    elseif sid ~= except then
      if not f[1] then
        revoke(sid, f[2], ARGV[5], ARGV[4])
        revoked[#revoked + 1] = f[3]
        published[#published + 1] = f[3]
      elseif (tonumber(f[4]) or 0) >= recent then
        -- Revoked moments ago by another call that may still wait for a silent instance's
        -- lease: published again, so that this call too returns only once every instance
        -- dropped it (a repeated "sign out everywhere").
        published[#published + 1] = f[3]
      end
    end
  end
end)
