ALTER TABLE messages SET (fillfactor = 70);
ALTER TABLE conversations SET (fillfactor = 80);
CREATE INDEX messages_streaming ON messages (created_at) WHERE status = 'streaming';
