-- Claim an Idempotency-Key for one request, or read who has it.
--
-- KEYS[1]  idempotency:<digest of caller and key>  STRING, JSON record
-- ARGV[1]  the running record of this request (fingerprint, token)
-- ARGV[2]  its expiry (seconds): past it, a request still marked running
--          is taken for dead and the key is free again
--
-- Returns nil when the key was free and is now this request's, else the
-- record found (running or done). Two racing requests never both get nil.
local found = redis.call('GET', KEYS[1])
if found then
  return found
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
