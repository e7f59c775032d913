INSERT INTO conversations (tenant_id, id, owner_id, settings, last_seq)
SELECT 'tenant-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b', '0190a1b2-c3d4-7e5f-8a9b-' || lpad(g::text, 12, '0'),
       'user-0190a1b2', '{}', 100 FROM generate_series(1, 5000) g;
INSERT INTO messages (tenant_id, conversation_id, id, role, status, text, first_seq, last_seq)
SELECT 'tenant-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b', '0190a1b2-c3d4-7e5f-8a9b-' || lpad(g::text, 12, '0'),
       '0190a1b2-ffff-7e5f-8a9b-' || lpad(m::text, 12, '0'), 'assistant', 'complete',
       repeat('word ', 60), m * 5, m * 5 + 4
FROM generate_series(1, 5000) g, generate_series(1, 10) m;
INSERT INTO messages (tenant_id, conversation_id, id, role, status, text, first_seq, last_seq)
SELECT 'tenant-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b', '0190a1b2-c3d4-7e5f-8a9b-' || lpad(g::text, 12, '0'),
       '0190a1b2-eeee-7e5f-8a9b-' || lpad(g::text, 12, '0'), 'assistant', 'streaming', '', 100, 100
FROM generate_series(1, 5000) g;
VACUUM ANALYZE;
