//! The extension after a message's envelope (header flag [`FLAG_EXT`]): the owner and
//! extended attributes of manifest entries and patches, by their index. Nodes of the
//! previous protocol decode the body with postcard, which stops at the envelope's end,
//! so they sync contents and never see it (docs/PROTOCOL.md, "Extension").

use super::codec::DecodeError;
use super::{FilePatch, Message};
use crate::engine::{Attrs, Entry, SharedAttrs};
use serde::{Deserialize, Serialize};

/// The header flag that says an extension follows the envelope.
pub const FLAG_EXT: u8 = 2;

/// Extended attributes one entry may carry.
pub const MAX_XATTRS: usize = 64;
/// Longest attribute name in bytes (Linux's `XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME: usize = 255;
/// Bytes of values per entry (Linux's `XATTR_SIZE_MAX`, for one value, as a total).
pub const MAX_XATTR_BYTES: usize = 65_536;
/// Longest user or group name in bytes.
pub const MAX_OWNER_NAME: usize = 256;

/// The attribute namespaces mqsync reads and writes; `trusted.*` and other `system.*`
/// attributes belong to the local system and are never synced.
pub fn synced_xattr_name(name: &str) -> bool {
    name.starts_with("user.")
        || name.starts_with("security.")
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Extension {
    attrs: Vec<(u32, Attrs)>,
}

/// Messages whose items carry attributes.
pub trait HasAttrs {
    fn attrs(&self) -> &SharedAttrs;
    fn attrs_mut(&mut self) -> &mut SharedAttrs;
}

impl HasAttrs for Entry {
    fn attrs(&self) -> &SharedAttrs {
        &self.attrs
    }
    fn attrs_mut(&mut self) -> &mut SharedAttrs {
        &mut self.attrs
    }
}

impl HasAttrs for FilePatch {
    fn attrs(&self) -> &SharedAttrs {
        &self.attrs
    }
    fn attrs_mut(&mut self) -> &mut SharedAttrs {
        &mut self.attrs
    }
}

/// Bytes an item's attributes add to a message (for batching to a size).
pub fn attrs_size(item: &impl HasAttrs) -> usize {
    item.attrs().as_ref().map_or(0, |a| {
        postcard::experimental::serialized_size(&**a).unwrap_or(MAX_XATTR_BYTES) + 5
    })
}

fn collect<T: HasAttrs>(items: &[T]) -> Vec<(u32, Attrs)> {
    items
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.attrs().as_ref().map(|a| (i as u32, Attrs::clone(a))))
        .collect()
}

/// The extension `msg` needs, if any of its items carries attributes.
pub(super) fn of(msg: &Message) -> Option<Extension> {
    let attrs = match msg {
        Message::Manifest { entries, .. } => collect(entries),
        Message::Patch { patches } => collect(patches),
        _ => return None,
    };
    (!attrs.is_empty()).then_some(Extension { attrs })
}

/// Gives `msg`'s items the attributes of `ext`, checking every bound first.
pub(super) fn apply(msg: &mut Message, ext: Extension) -> Result<(), DecodeError> {
    fn give<T: HasAttrs>(items: &mut [T], ext: Extension) -> Result<(), DecodeError> {
        let mut last = None;
        for (i, attrs) in ext.attrs {
            // Strictly increasing indices: each item once, a bounded count.
            if last.is_some_and(|l| i <= l) || i as usize >= items.len() {
                return Err(DecodeError::TooMany(i as usize));
            }
            last = Some(i);
            check_attrs(&attrs).map_err(|reason| DecodeError::BadEntry {
                path: format!("item {i} of the message"),
                reason,
            })?;
            *items[i as usize].attrs_mut() = attrs.shared();
        }
        Ok(())
    }
    match msg {
        Message::Manifest { entries, .. } => give(entries, ext),
        Message::Patch { patches } => give(patches, ext),
        _ if ext.attrs.is_empty() => Ok(()),
        _ => Err(DecodeError::TooMany(ext.attrs.len())),
    }
}

/// The bounds of one item's attributes: names a passwd or group file can hold,
/// attribute names of the synced namespaces, and bounded counts and sizes.
pub fn check_attrs(a: &Attrs) -> Result<(), String> {
    if let Some(o) = &a.owner {
        // -1 means "leave unchanged" to chown: never an owner.
        if o.uid == u32::MAX || o.gid == u32::MAX {
            return Err("owner or group id 4294967295".into());
        }
        for name in [&o.user, &o.group].into_iter().flatten() {
            if name.is_empty() || name.len() > MAX_OWNER_NAME || name.contains([':', '\n', '\0']) {
                return Err(format!("owner name {name:?} is not a valid name"));
            }
        }
    }
    let Some(xattrs) = &a.xattrs else {
        return Ok(());
    };
    if xattrs.len() > MAX_XATTRS {
        return Err(format!(
            "{} extended attributes, more than {MAX_XATTRS}",
            xattrs.len()
        ));
    }
    let mut total = 0usize;
    for (i, x) in xattrs.iter().enumerate() {
        if x.name.len() > MAX_XATTR_NAME || x.name.contains('\0') || !synced_xattr_name(&x.name) {
            return Err(format!(
                "extended attribute name {:?} is not synced",
                x.name
            ));
        }
        if i > 0 && xattrs[i - 1].name >= x.name {
            return Err("extended attributes not sorted or repeated".into());
        }
        total = total.saturating_add(x.value.len());
    }
    if total > MAX_XATTR_BYTES {
        return Err(format!(
            "{total} bytes of extended attributes, more than {MAX_XATTR_BYTES}"
        ));
    }
    Ok(())
}

/// Messages as the previous protocol (without extensions) wrote and read them.
#[cfg(test)]
mod tests {
    use super::super::{DecodeError, Envelope, Keys, decode, encode_with, sign_raw};
    use super::*;
    use crate::engine::{Content, Owner, VersionVector, Xattr};
    use crate::protocol::relpath::RelPath;

    /// The previous protocol's schema, as its nodes declare it: an entry with no
    /// attributes, in an envelope whose message enum starts with `Manifest`.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OldEntry {
        path: RelPath,
        version: VersionVector,
        modified_by: String,
        changed_ms: u64,
        content: Content,
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum OldMessage {
        Manifest { live: bool, entries: Vec<OldEntry> },
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OldEnvelope {
        from: String,
        msg: OldMessage,
    }

    const T: &str = "mqsync/f/v1/n1";

    fn keys() -> Keys {
        Keys::new(vec![Keys::derive(b"secret\n")]).unwrap()
    }

    fn owned(user: &str) -> Attrs {
        Attrs {
            owner: Some(Owner {
                uid: 33,
                gid: 34,
                user: Some(user.into()),
                group: Some("www-data".into()),
            }),
            xattrs: Some(vec![Xattr {
                name: "user.origin".into(),
                value: b"node-1".to_vec(),
            }]),
        }
    }

    fn file(attrs: SharedAttrs) -> Entry {
        Entry {
            path: RelPath::new("etc/key.pem").unwrap(),
            version: VersionVector::new().incremented("n1"),
            modified_by: "n1".into(),
            changed_ms: 5,
            content: Content::File {
                size: 0,
                mode: 0o640,
                mtime_ns: 9,
                chunks: Default::default(),
            },
            attrs,
        }
    }

    fn manifest(entries: Vec<Entry>) -> Envelope {
        Envelope {
            from: "n1".into(),
            msg: Message::Manifest {
                live: true,
                entries,
            },
        }
    }

    #[test]
    fn attributes_travel_and_a_previous_node_reads_the_rest() {
        let env = manifest(vec![file(None), file(owned("www-data").shared())]);
        let b = encode_with(&env, T, &keys(), false).unwrap();
        assert_eq!(b[5], FLAG_EXT, "the header says an extension follows");
        assert_eq!(decode(&b, T, "n1", &keys()).unwrap(), env);
        // What a node of the previous protocol does with the body: postcard stops at
        // the end of the envelope and never sees the extension.
        let body = &b[super::super::HEADER_LEN..b.len() - super::super::MAC_LEN];
        let old: OldEnvelope = postcard::from_bytes(body).expect("previous decode");
        let OldMessage::Manifest { entries, .. } = &old.msg;
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].content, file(None).content);
        assert_eq!(entries[1].path.as_str(), "etc/key.pem");
    }

    #[test]
    fn a_message_of_the_previous_protocol_decodes_with_attributes_unknown() {
        let old = OldEnvelope {
            from: "n1".into(),
            msg: OldMessage::Manifest {
                live: false,
                entries: vec![OldEntry {
                    path: RelPath::new("etc/key.pem").unwrap(),
                    version: VersionVector::new().incremented("n1"),
                    modified_by: "n1".into(),
                    changed_ms: 5,
                    content: file(None).content,
                }],
            },
        };
        let raw = postcard::to_allocvec(&old).unwrap();
        let b = sign_raw(1, false, raw.len() as u32, &raw, T, &keys());
        let env = decode(&b, T, "n1", &keys()).unwrap();
        let Message::Manifest { live, entries } = env.msg else {
            panic!("{env:?}")
        };
        assert!(!live);
        assert_eq!(entries, vec![file(None)]);
    }

    #[test]
    fn attributes_beyond_the_bounds_are_refused() {
        let many = Attrs {
            owner: None,
            xattrs: Some(
                (0..=MAX_XATTRS)
                    .map(|i| Xattr {
                        name: format!("user.a{i:03}"),
                        value: vec![],
                    })
                    .collect(),
            ),
        };
        let big = Attrs {
            owner: None,
            xattrs: Some(vec![Xattr {
                name: "user.big".into(),
                value: vec![0; MAX_XATTR_BYTES + 1],
            }]),
        };
        let trusted = Attrs {
            owner: None,
            xattrs: Some(vec![Xattr {
                name: "trusted.overlay.opaque".into(),
                value: b"y".to_vec(),
            }]),
        };
        let bad_name = owned("www:data");
        for a in [many, big, trusted, bad_name] {
            let b = encode_with(
                &manifest(vec![file(Some(triomphe::Arc::new(a)))]),
                T,
                &keys(),
                true,
            )
            .unwrap();
            let got = decode(&b, T, "n1", &keys());
            assert!(matches!(got, Err(DecodeError::BadEntry { .. })), "{got:?}");
        }
        // An index past the message's entries, and indices out of order.
        for attrs in [
            vec![(1, owned("x"))],
            vec![(0, owned("x")), (0, owned("y"))],
        ] {
            let mut body = postcard::to_allocvec(&manifest(vec![file(None)])).unwrap();
            body.extend_from_slice(&postcard::to_allocvec(&Extension { attrs }).unwrap());
            let mut b = super::super::MAGIC.to_vec();
            b.extend_from_slice(&[1, FLAG_EXT]);
            b.extend_from_slice(&(body.len() as u32).to_be_bytes());
            b.extend_from_slice(&body);
            let mac = keys().tag(T, &b);
            b.extend_from_slice(&mac);
            let got = decode(&b, T, "n1", &keys());
            assert!(matches!(got, Err(DecodeError::TooMany(_))), "{got:?}");
        }
    }
}
