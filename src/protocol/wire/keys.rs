//! The group keys that sign and verify every message: a BLAKE3 keyed MAC over the
//! topic and the bytes before the tag. The first key signs; any key verifies, so a
//! group can rotate its key without a flag day.

/// The group keys: the first signs, any of them verifies (for rotation).
#[derive(Clone)]
pub struct Keys {
    pub(super) keys: Vec<[u8; 32]>,
}

impl Keys {
    pub fn new(keys: Vec<[u8; 32]>) -> Option<Self> {
        (!keys.is_empty()).then_some(Keys { keys })
    }

    /// Derives a key from the text of a group key file (any length, any content).
    pub fn derive(secret: &[u8]) -> [u8; 32] {
        blake3::derive_key("mqsync group key v1", secret.trim_ascii())
    }

    /// The MAC of `data` published on `topic`, under the signing (first) key.
    pub fn tag(&self, topic: &str, data: &[u8]) -> [u8; 32] {
        Self::mac(&self.keys[0], topic, data)
    }

    /// Whether `tag` is the MAC of `data` on `topic` under any of the keys (the
    /// comparison is constant-time).
    pub fn verifies(&self, topic: &str, data: &[u8], tag: &[u8; 32]) -> bool {
        let given = blake3::Hash::from(*tag);
        self.keys
            .iter()
            .any(|k| blake3::Hash::from(Self::mac(k, topic, data)) == given)
    }

    pub(super) fn mac(key: &[u8; 32], topic: &str, data: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(&(topic.len() as u64).to_le_bytes());
        h.update(topic.as_bytes());
        h.update(data);
        *h.finalize().as_bytes()
    }
}
