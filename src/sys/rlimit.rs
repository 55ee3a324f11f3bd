//! Raises the process's open-file limit to its hard maximum at start-up. A node holds
//! descriptors for its applies, watches and connections, and the broker one per client;
//! the soft default of 1,024 (systemd, many shells) is the limit operators hit first.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The soft open-file limit in force (`None`: unlimited).
pub fn open_files() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Sets the soft `RLIMIT_NOFILE` to the hard one. Returns the limit now in force.
pub fn raise_open_files() -> Option<u64> {
    let cur = getrlimit(Resource::Nofile);
    if cur.current >= cur.maximum {
        return cur.current;
    }
    let want = Rlimit {
        current: cur.maximum,
        maximum: cur.maximum,
    };
    match setrlimit(Resource::Nofile, want) {
        Ok(()) => cur.maximum,
        Err(e) => {
            tracing::debug!("cannot raise the open-file limit: {e}");
            cur.current
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_only_grows_and_is_reported() {
        use rustix::process::{Resource, getrlimit};
        let before = getrlimit(Resource::Nofile);
        let now = super::raise_open_files();
        let after = getrlimit(Resource::Nofile);
        assert_eq!(now, after.current);
        // `None` is unlimited.
        assert!(after.current.unwrap_or(u64::MAX) >= before.current.unwrap_or(u64::MAX));
        if before.maximum.is_some() {
            assert_eq!(after.current, after.maximum);
        }
    }
}
