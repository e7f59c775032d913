CREATE INDEX messages_by_last_seq ON messages (tenant_id, conversation_id, last_seq);
CREATE INDEX messages_streaming ON messages (updated_at) WHERE status = 'streaming';
