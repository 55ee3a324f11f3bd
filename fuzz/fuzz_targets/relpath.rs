//! Bytes → `RelPath::new` (UTF-8 input) and `RelPath::from_local` (any bytes, as a
//! Unix path below a root). Whenever a path is accepted it must be relative, free of
//! `.`/`..`/empty components and NUL, within the length bounds, stay under the root
//! when joined to it, and round-trip through `from_local` and postcard.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqsync::protocol::relpath::{MAX_COMPONENT_BYTES, MAX_PATH_BYTES, RelPath};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

const ROOT: &str = "/srv/mqsync/root";

fn check_accepted(p: &RelPath) {
    let s = p.as_str();
    let root = Path::new(ROOT);
    assert!(!s.is_empty(), "empty accepted");
    assert!(s.len() <= MAX_PATH_BYTES, "too long accepted: {}", s.len());
    assert!(!s.starts_with('/'), "absolute accepted: {s:?}");
    assert!(!s.contains('\0'), "NUL accepted: {s:?}");
    let comps: Vec<&str> = s.split('/').collect();
    for c in &comps {
        assert!(!c.is_empty(), "empty component accepted: {s:?}");
        assert!(*c != "." && *c != "..", "dot component accepted: {s:?}");
        assert!(
            c.len() <= MAX_COMPONENT_BYTES,
            "long component accepted: {s:?}"
        );
    }
    assert_eq!(p.depth(), comps.len());

    // Joined to a root it stays below it, one normal component per path component.
    let local = p.to_local(root);
    let rel = local
        .strip_prefix(root)
        .expect("joined path is under the root");
    let parts: Vec<_> = rel.components().collect();
    assert_eq!(parts.len(), comps.len(), "{s:?} -> {local:?}");
    for (part, c) in parts.iter().zip(&comps) {
        match part {
            Component::Normal(n) => assert_eq!(n.as_bytes(), c.as_bytes()),
            other => panic!("{s:?} joins as {other:?}"),
        }
    }
    assert!(local.starts_with(root));
    assert_eq!(RelPath::from_local(root, &local).as_ref(), Ok(p));

    // Parent, name and prefix helpers agree with the string.
    assert_eq!(p.file_name(), *comps.last().unwrap());
    match p.parent() {
        None => assert_eq!(comps.len(), 1),
        Some(parent) => {
            assert_eq!(parent.depth() + 1, comps.len());
            assert_eq!(RelPath::new(parent.as_str()).as_ref(), Ok(&parent));
            assert!(p.starts_with(&parent) && !parent.starts_with(p));
        }
    }
    assert_eq!(p.with_file_name(p.file_name()).as_ref(), Ok(p));

    // The wire form validates the same way.
    let bytes = postcard::to_allocvec(p).expect("serialize");
    assert_eq!(postcard::from_bytes::<RelPath>(&bytes).as_ref(), Ok(p));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        match RelPath::new(s) {
            Ok(p) => {
                assert_eq!(p.as_str(), s);
                check_accepted(&p);
            }
            Err(_) => {
                // Deserialization from the wire rejects it too.
                let bytes = postcard::to_allocvec(s).expect("serialize");
                assert!(postcard::from_bytes::<RelPath>(&bytes).is_err(), "{s:?}");
            }
        }
    }
    // Any bytes as a name found on the local disk below the root.
    let root = Path::new(ROOT);
    let full = root.join(OsStr::from_bytes(data));
    if let Ok(p) = RelPath::from_local(root, &full) {
        check_accepted(&p);
    }
});
