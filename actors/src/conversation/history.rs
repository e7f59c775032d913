//! The history window: the bounded slice of a conversation sent to the model with each turn.
//!
//! Holds the most recent messages in turn order (each user message followed by its reply),
//! trimmed from the front to at most `max_messages` messages and about `max_chars`
//! characters. The newest message always stays, however long, and the window never starts
//! with an assistant message (providers expect the user to speak first).

use std::collections::{HashMap, VecDeque};

use crate::ports::llm::{ChatMessage, Role};
use crate::ports::store::StoredMessage;

#[derive(Debug, Clone)]
pub struct HistoryWindow {
    messages: VecDeque<ChatMessage>,
    chars: usize,
    max_messages: usize,
    max_chars: usize,
}

impl HistoryWindow {
    pub fn new(max_messages: usize, max_chars: usize) -> Self {
        Self { messages: VecDeque::new(), chars: 0, max_messages: max_messages.max(1), max_chars }
    }

    /// Rebuilds the window from stored messages (in stored order). A reply is placed right
    /// after the user message it answers, even when other user messages were stored between
    /// them (they were posted while it streamed); replies with no visible text are skipped.
    pub fn from_stored(messages: &[StoredMessage], max_messages: usize, max_chars: usize) -> Self {
        let replies: HashMap<&str, &StoredMessage> = messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .filter_map(|m| m.reply_to.as_deref().map(|to| (to, m)))
            .collect();
        let mut window = Self::new(max_messages, max_chars);
        for user in messages.iter().filter(|m| m.role == Role::User) {
            window.push(ChatMessage::user(user.text.clone()));
            if let Some(reply) = replies.get(user.id.as_str()) {
                let content = reply.content();
                if !content.is_empty() {
                    window.push(ChatMessage::assistant(content));
                }
            }
        }
        window
    }

    pub fn push(&mut self, message: ChatMessage) {
        self.chars += message.content.len();
        self.messages.push_back(message);
        self.trim();
    }

    fn trim(&mut self) {
        while self.messages.len() > 1
            && (self.messages.len() > self.max_messages || self.chars > self.max_chars)
        {
            self.pop_front();
        }
        while self.messages.len() > 1
            && self.messages.front().is_some_and(|m| m.role == Role::Assistant)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(old) = self.messages.pop_front() {
            self.chars -= old.content.len();
        }
    }

    /// The messages to send, oldest first.
    pub fn to_vec(&self) -> Vec<ChatMessage> {
        self.messages.iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_by_count_and_size_and_starts_with_the_user() {
        let mut w = HistoryWindow::new(3, 1000);
        for i in 0..4 {
            w.push(ChatMessage::user(format!("q{i}")));
            w.push(ChatMessage::assistant(format!("a{i}")));
        }
        // The last three messages start with a reply (a2), which is dropped too.
        assert_eq!(w.to_vec(), vec![ChatMessage::user("q3"), ChatMessage::assistant("a3")]);

        let mut w = HistoryWindow::new(10, 10);
        w.push(ChatMessage::user("12345"));
        w.push(ChatMessage::assistant("12345"));
        w.push(ChatMessage::user("this one is far too long"));
        assert_eq!(w.to_vec(), vec![ChatMessage::user("this one is far too long")]);
    }
}
