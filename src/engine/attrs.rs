//! Owner, group and extended attributes of a path, kept when its folder asks for them
//! (`ownership`, `xattrs`). `None` means "not kept or not known": a node that does not
//! keep them, or runs the previous protocol, leaves the receiver's owner alone.
//! They travel after the message body (docs/PROTOCOL.md, "Extension").

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// Who owns a path: numeric ids, and the names they had on the node that saw them
/// (`ownership = "names"`; `None` with `"numeric"` or when the id has no name there).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
}

/// One extended attribute (`user.*`, `security.*`, `system.posix_acl_*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Xattr {
    pub name: String,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// What a path carries besides its content. `xattrs` is sorted by name; `Some(empty)`
/// says "none", `None` "not kept".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Attrs {
    pub owner: Option<Owner>,
    pub xattrs: Option<Vec<Xattr>>,
}

/// Attributes as an entry holds them: one pointer, shared between the many paths of a
/// tree that have the same owner and no extended attributes.
pub type SharedAttrs = Option<triomphe::Arc<Attrs>>;

/// Distinct attribute sets shared at most: beyond, new ones are simply not shared.
const MAX_SHARED: usize = 4096;

impl Attrs {
    pub fn is_empty(&self) -> bool {
        self.owner.is_none() && self.xattrs.is_none()
    }

    /// These attributes as an entry holds them (`None` when empty).
    pub fn shared(self) -> SharedAttrs {
        static SEEN: OnceLock<Mutex<HashSet<triomphe::Arc<Attrs>>>> = OnceLock::new();
        if self.is_empty() {
            return None;
        }
        if self.xattrs.as_ref().is_some_and(|x| !x.is_empty()) {
            return Some(triomphe::Arc::new(self));
        }
        let seen = SEEN.get_or_init(|| Mutex::new(HashSet::new()));
        // A poisoned lock still holds a valid set: the insert below cannot half-fail.
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = seen.get(&self) {
            return Some(a.clone());
        }
        let a = triomphe::Arc::new(self);
        if seen.len() < MAX_SHARED {
            seen.insert(a.clone());
        }
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_owners_share_one_allocation_and_empty_is_none() {
        let o = || Attrs {
            owner: Some(Owner {
                uid: 33,
                gid: 33,
                user: Some("www-data".into()),
                group: Some("www-data".into()),
            }),
            xattrs: Some(vec![]),
        };
        let (a, b) = (o().shared().unwrap(), o().shared().unwrap());
        assert!(triomphe::Arc::ptr_eq(&a, &b));
        assert_eq!(Attrs::default().shared(), None);
    }
}
