\set g random(1, 5000)
WITH c AS (
  UPDATE conversations SET last_seq = last_seq + 1, updated_at = now()
  WHERE tenant_id = 'tenant-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b' AND id = '0190a1b2-c3d4-7e5f-8a9b-' || lpad(:g::text, 12, '0')
  RETURNING tenant_id, id, last_seq)
INSERT INTO messages (tenant_id, conversation_id, id, role, status, text, delta_ends, first_seq, last_seq)
SELECT c.tenant_id, c.id, '0190a1b2-eeee-7e5f-8a9b-' || lpad(:g::text, 12, '0'), 'assistant', 'streaming', 'tok tok tok ', '{4,8,12}', 100, c.last_seq FROM c
ON CONFLICT (tenant_id, conversation_id, id) DO UPDATE SET
  text = messages.text || EXCLUDED.text, delta_ends = messages.delta_ends || EXCLUDED.delta_ends,
  last_seq = GREATEST(messages.last_seq, EXCLUDED.last_seq), updated_at = now()
WHERE messages.status = 'streaming' AND messages.last_seq < EXCLUDED.last_seq;
